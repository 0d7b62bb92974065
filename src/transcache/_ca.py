# The certificate authority that lets transcache terminate TLS for the hosts clients CONNECT to.
#
# load_or_create() makes, on first run, a root CA (ECDSA P-256, ten years, path length 0) in
# ca_dir: ca-key.pem (0600), ca.pem (the certificate users install as trusted) and leaf-key.pem
# (0600), one P-256 key shared by every leaf so a new host costs one signature and no key
# generation. Creation and loading run under an exclusive flock on ca_dir/ca.lock, so processes
# starting together agree on one CA: the first creates it, the others wait and load it. Each file
# is written to a temp file in its directory and renamed over its target, so a crash leaves the
# old file or the new one, never half of one. ca-key.pem is written (and fsynced) before ca.pem,
# whose presence marks the CA complete: a key without a certificate is an interrupted first run
# and is replaced, a certificate without its key is an error, since users may already trust it.
#
# server_context(host) returns an SSLContext presenting a leaf for host, kept in memory until
# the leaf nears expiry, for the LEAF_CONTEXTS_KEPT hosts used last (a forward proxy meets new
# hosts for as long as it runs; a dropped one is loaded from its file again). Leaves also live
# in ca_dir/leaves/, in files named by a hash of the canonical host (lower-case DNS name or
# compressed IP address), and are reused across restarts while they were signed by this CA for
# the shared key and have more than a week left. Any other leaf file (missing, corrupt, stale,
# foreign) is re-minted, so leaves need neither lock nor fsync: two processes minting one host
# both write a valid leaf and the last rename wins.
#
# Both certificates are built to pass Python's VERIFY_X509_STRICT, `openssl verify -x509_strict`,
# GnuTLS and webpki: critical basicConstraints and keyUsage, SKI on both, AKI and SAN on the leaf,
# SHA-256 signatures, positive serials of at most 159 bits, leaves valid far under 398 days.

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import hashlib
import ipaddress
import os
import re
import secrets
import socket
import ssl
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._errors import TranscacheError

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca-key.pem"
LEAF_KEY_NAME = "leaf-key.pem"
LOCK_NAME = "ca.lock"
LEAVES_DIR_NAME = "leaves"

CA_ORGANIZATION = "transcache"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=90)
# Certificates start a day in the past so a client whose clock lags ours still accepts them.
BACKDATE = dt.timedelta(days=1)
LEAF_RENEW_BEFORE = dt.timedelta(days=7)
ALPN_PROTOCOLS = ["http/1.1"]

MAX_HOST_LENGTH = 253
# Contexts kept in memory (about 20 KB each), least recently used dropped first.
LEAF_CONTEXTS_KEPT = 1000
MAX_COMMON_NAME_LENGTH = 64  # ub-common-name, RFC 5280
SERIAL_HEX_IN_NAME = 8

# One DNS label, lower case. Underscores are not valid in host names but do occur in the wild,
# and every verifier we target accepts them in a dNSName.
_DNS_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class CAError(TranscacheError):
    """The CA's files cannot be read or written, or a host cannot be given a certificate."""


class InvalidHostError(CAError):
    """The client asked for a host no certificate can name: the client's fault, not ours."""


class CertificateAuthority:
    """The root CA in one directory, and the per-host leaf certificates it signs."""

    cert_path: Path
    cert_pem: bytes
    certificate: x509.Certificate

    def __init__(
        self,
        ca_dir: Path,
        certificate: x509.Certificate,
        cert_pem: bytes,
        key: ec.EllipticCurvePrivateKey,
        leaf_key: ec.EllipticCurvePrivateKey,
    ) -> None:
        self.cert_path = ca_dir / CA_CERT_NAME
        self.cert_pem = cert_pem
        self.certificate = certificate
        self._key = key
        self._leaf_key = leaf_key
        self._leaf_key_path = ca_dir / LEAF_KEY_NAME
        self._leaves_dir = ca_dir / LEAVES_DIR_NAME
        try:
            self._ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound as e:
            raise CAError(f"{self.cert_path} has no subject key identifier") from e
        # Keyed by the host exactly as the client sent it, so a known host is one dict lookup.
        # The value holds the time after which the leaf should be renewed.
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, dt.datetime]] = OrderedDict()

    @classmethod
    def load_or_create(cls, ca_dir: Path) -> CertificateAuthority:
        """Load the CA in ca_dir, creating the directory and the CA on first use."""
        try:
            ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            (ca_dir / LEAVES_DIR_NAME).mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise CAError(f"cannot create {ca_dir}: {e.strerror or e}") from e
        cert_path = ca_dir / CA_CERT_NAME
        key_path = ca_dir / CA_KEY_NAME
        leaf_key_path = ca_dir / LEAF_KEY_NAME
        with _exclusive_lock(ca_dir / LOCK_NAME):
            if cert_path.exists():
                if not key_path.exists():
                    raise CAError(
                        f"{cert_path} exists but its key {key_path} is missing; "
                        "remove both to create a new CA"
                    )
                cert_pem = _read(cert_path)
                certificate = _load_certificate(cert_path, cert_pem)
                key = _load_key(key_path)
                if certificate.public_key() != key.public_key():
                    raise CAError(f"{key_path} is not the key of {cert_path}")
            else:
                key = ec.generate_private_key(ec.SECP256R1())
                certificate = _build_root(key, _now())
                cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
                _write_atomically(key_path, _private_pem(key), 0o600, durable=True)
                _write_atomically(cert_path, cert_pem, 0o644, durable=True)
            if leaf_key_path.exists():
                leaf_key = _load_key(leaf_key_path)
            else:
                leaf_key = ec.generate_private_key(ec.SECP256R1())
                _write_atomically(leaf_key_path, _private_pem(leaf_key), 0o600, durable=True)
        return cls(ca_dir, certificate, cert_pem, key, leaf_key)

    def server_context(self, host: str) -> ssl.SSLContext:
        """An SSLContext that terminates TLS for a client that CONNECTed to host.

        host is a DNS name or an IPv4/IPv6 literal without brackets; anything else raises
        InvalidHostError. Failing to read or write the CA's files raises CAError.
        """
        cached = self._contexts.get(host)
        now = _now()
        if cached is not None and now < cached[1]:
            self._contexts.move_to_end(host)
            return cached[0]
        name, san = _parse_host(host)
        path = self._leaves_dir / _leaf_file_name(name)
        leaf = self._reusable_leaf(path, now)
        if leaf is None:
            leaf = self._mint_leaf(name, san, now)
            _write_atomically(path, leaf.public_bytes(serialization.Encoding.PEM), 0o644)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(ALPN_PROTOCOLS)
        try:
            context.load_cert_chain(path, self._leaf_key_path)
        except (OSError, ssl.SSLError) as e:
            raise CAError(f"cannot load {path} with {self._leaf_key_path}: {e}") from e
        self._contexts[host] = (context, leaf.not_valid_after_utc - LEAF_RENEW_BEFORE)
        self._contexts.move_to_end(host)
        if len(self._contexts) > LEAF_CONTEXTS_KEPT:
            self._contexts.popitem(last=False)
        return context

    def leaf_path(self, host: str) -> Path:
        """Where the leaf certificate for host is kept; raises InvalidHostError if invalid."""
        name, _ = _parse_host(host)
        return self._leaves_dir / _leaf_file_name(name)

    def _reusable_leaf(self, path: Path, now: dt.datetime) -> x509.Certificate | None:
        try:
            leaf = x509.load_pem_x509_certificate(path.read_bytes())
            leaf.verify_directly_issued_by(self.certificate)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return None
        if leaf.public_key() != self._leaf_key.public_key():
            return None
        if leaf.not_valid_after_utc - now <= LEAF_RENEW_BEFORE:
            return None
        return leaf

    def _mint_leaf(self, name: str, san: x509.GeneralName, now: dt.datetime) -> x509.Certificate:
        public_key = self._leaf_key.public_key()
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, name[:MAX_COMMON_NAME_LENGTH])]
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + LEAF_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski.value),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_host(host: str) -> tuple[str, x509.GeneralName]:
    """Return host's canonical spelling and its SAN entry, or raise InvalidHostError."""
    if not host:
        raise InvalidHostError("empty host name")
    if len(host) > MAX_HOST_LENGTH:
        raise InvalidHostError(
            f"host name of {len(host)} characters is longer than {MAX_HOST_LENGTH}"
        )
    # isascii() first: str.lower() maps some non-ASCII letters (KELVIN SIGN) to ASCII ones.
    if not host.isascii():
        raise InvalidHostError(f"host {host!r} is not ASCII")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
            raise InvalidHostError(
                f"host {host!r} has an IPv6 zone, which a certificate cannot name"
            )
        return str(ip), x509.IPAddress(ip)
    name = host.lower()
    labels = name.split(".")
    # A numeric last label is never a DNS name, only a malformed IPv4 address such as 1.2.3.
    if labels[-1].isdigit() or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise InvalidHostError(f"host {host!r} is neither a DNS name nor an IP address")
    return name, x509.DNSName(name)


def _leaf_file_name(name: str) -> str:
    # A hash of the canonical name: fixed length (a 253-character host plus a suffix would pass
    # the 255-byte file name limit), free of '/' and '..' whatever the host held, and distinct
    # for distinct hosts.
    return hashlib.sha256(name.encode()).hexdigest() + ".pem"


def _build_root(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    serial = x509.random_serial_number()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, _root_common_name(serial)),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _root_common_name(serial: int) -> str:
    """'transcache CA user@host 1a2b3c4d': who made this CA, and which one it is."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment or the password database
        user = str(os.getuid())
    prefix = "transcache CA "
    suffix = f" {serial:x}"[: SERIAL_HEX_IN_NAME + 1]
    who = f"{user}@{socket.gethostname()}"
    return prefix + who[: MAX_COMMON_NAME_LENGTH - len(prefix) - len(suffix)] + suffix


def _key_usage(
    *, digital_signature: bool, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CAError(f"cannot read {path}: {e.strerror or e}") from e


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CAError(f"{path} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{path} holds a {type(key).__name__}, not an ECDSA key")
    return key


def _load_certificate(path: Path, pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise CAError(f"{path} is not a PEM certificate: {e}") from e


def _write_atomically(path: Path, data: bytes, mode: int, *, durable: bool = False) -> None:
    """Replace path with data in one rename; durable files also survive a power cut.

    The file is created with mode (less the umask) and never widened afterwards, so a key is
    private from its first byte.
    """
    temp = path.with_name(f".{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with open(fd, "wb") as file:
            file.write(data)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temp, path)
        if durable:
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as e:
        temp.unlink(missing_ok=True)
        raise CAError(f"cannot write {path}: {e.strerror or e}") from e


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CAError(f"cannot open lock file {path}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
