import contextlib
import datetime as dt
import getpass
import ipaddress
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from transcache import _ca
from transcache._ca import (
    CA_CERT_NAME,
    CAError,
    CertificateAuthority,
    InvalidHostError,
)

HOSTS = ["example.com", "127.0.0.1", "::1"]
CA_FILES = ["ca.pem", "ca-key.pem", "leaf-key.pem"]


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "ca"


@pytest.fixture
def ca(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(ca_dir)


def leaf_for(ca: CertificateAuthority, host: str) -> x509.Certificate:
    ca.server_context(host)
    return x509.load_pem_x509_certificate(ca.leaf_path(host).read_bytes())


def file_identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ca_key(ca_dir: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def write_leaf(
    path: Path,
    *,
    issuer: x509.Name,
    signing_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    not_after: dt.datetime,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.com")]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("example.com")]), False)
        .sign(signing_key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str
) -> ssl.SSLObject:
    """Run a TLS handshake over memory BIOs; return the client's end."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    pending = [client, server]
    for _ in range(10):
        for end in list(pending):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                continue
            pending.remove(end)
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if not pending:
            return client
    raise AssertionError("handshake did not finish")


def strict_client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca.cert_path)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.set_alpn_protocols(["h2", "http/1.1"])
    assert context.check_hostname
    return context


# Root CA


def test_root_ca_is_a_ca_that_signs_only_leaves(ca: CertificateAuthority) -> None:
    ext = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ext.critical
    assert ext.value.ca
    assert ext.value.path_length == 0


def test_root_ca_key_usage_is_certificate_and_crl_signing(ca: CertificateAuthority) -> None:
    ext = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert ext.critical
    usage = ext.value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert usage.digital_signature
    assert not usage.key_encipherment
    assert not usage.content_commitment
    assert not usage.data_encipherment
    assert not usage.key_agreement


def test_root_ca_identifies_its_own_key(ca: CertificateAuthority) -> None:
    extensions = ca.certificate.extensions
    ski = extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert not ski.critical
    assert not aki.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(ca.certificate.public_key())
    assert aki.value.key_identifier == ski.value.digest


def test_root_ca_has_no_other_extensions(ca: CertificateAuthority) -> None:
    assert {type(ext.value) for ext in ca.certificate.extensions} == {
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
    }


def test_root_ca_name_says_transcache_user_host_and_serial(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    assert cert.subject == cert.issuer
    (org,) = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert org.value == "transcache"
    (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert isinstance(cn.value, str)
    assert cn.value.startswith(f"transcache CA {getpass.getuser()}@")
    assert socket.gethostname()[:8] in cn.value
    assert cn.value.endswith(" " + f"{cert.serial_number:x}"[:8])
    assert len(cn.value) <= 64


def test_root_ca_is_p256_sha256_with_a_random_positive_serial(ca_dir: Path) -> None:
    cert = CertificateAuthority.load_or_create(ca_dir).certificate
    other = CertificateAuthority.load_or_create(ca_dir.with_name("other")).certificate
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert 0 < cert.serial_number < 2**159
    assert cert.serial_number != other.serial_number
    assert cert.version == x509.Version.v3


def test_root_ca_is_valid_ten_years_from_yesterday(ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    cert = ca.certificate
    assert abs(cert.not_valid_before_utc - (now - dt.timedelta(days=1))) < dt.timedelta(minutes=1)
    assert abs(cert.not_valid_after_utc - (now + dt.timedelta(days=3650))) < dt.timedelta(minutes=1)


def test_ca_pem_holds_the_root_certificate(ca: CertificateAuthority, ca_dir: Path) -> None:
    assert ca.cert_path == ca_dir / CA_CERT_NAME
    assert ca.cert_path.read_bytes() == ca.cert_pem
    assert x509.load_pem_x509_certificate(ca.cert_pem) == ca.certificate


def test_key_files_are_private_whatever_the_umask(ca_dir: Path) -> None:
    old_umask = os.umask(0)
    try:
        CertificateAuthority.load_or_create(ca_dir)
    finally:
        os.umask(old_umask)
    assert mode_of(ca_dir) == 0o700
    assert mode_of(ca_dir / "ca-key.pem") == 0o600
    assert mode_of(ca_dir / "leaf-key.pem") == 0o600
    assert mode_of(ca_dir / "ca.pem") == 0o644


def test_ca_dir_holds_no_temporary_files(ca: CertificateAuthority, ca_dir: Path) -> None:
    ca.server_context("example.com")
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "ca-key.pem",
        "ca.lock",
        "ca.pem",
        "leaf-key.pem",
        "leaves",
    ]
    assert list((ca_dir / "leaves").iterdir()) == [ca.leaf_path("example.com")]


def test_second_load_returns_the_same_ca_without_rewriting(ca_dir: Path) -> None:
    first = CertificateAuthority.load_or_create(ca_dir)
    before = {name: file_identity(ca_dir / name) for name in CA_FILES}
    second = CertificateAuthority.load_or_create(ca_dir)
    assert second.certificate.serial_number == first.certificate.serial_number
    assert second.cert_pem == first.cert_pem
    assert {name: file_identity(ca_dir / name) for name in CA_FILES} == before


def test_processes_starting_together_agree_on_one_ca(ca_dir: Path) -> None:
    # Each child imports, says so, then waits for its stdin to close, so that all of them
    # reach load_or_create at nearly the same moment.
    script = (
        "import sys, pathlib, transcache._ca as m;"
        "print('ready', flush=True); sys.stdin.read();"
        "print(m.CertificateAuthority.load_or_create(pathlib.Path(sys.argv[1]))"
        ".certificate.serial_number)"
    )
    src = str(Path(_ca.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    with contextlib.ExitStack() as stack:
        processes = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", script, str(ca_dir)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                )
            )
            for _ in range(8)
        ]
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == b"ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.close()
        outputs = {process.stdout.read() for process in processes if process.stdout is not None}
        assert [process.wait(timeout=60) for process in processes] == [0] * len(processes)
    serial = CertificateAuthority.load_or_create(ca_dir).certificate.serial_number
    assert outputs == {f"{serial}\n".encode()}


def test_interrupted_first_run_is_completed_with_a_new_ca(ca_dir: Path) -> None:
    ca_dir.mkdir()
    (ca_dir / "ca-key.pem").write_bytes(b"half a key")
    ca = CertificateAuthority.load_or_create(ca_dir)
    assert ca_key(ca_dir).public_key() == ca.certificate.public_key()


def test_corrupt_ca_cert_is_an_error_naming_the_file(ca: CertificateAuthority) -> None:
    ca.cert_path.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    with pytest.raises(CAError, match=re.escape(str(ca.cert_path))):
        CertificateAuthority.load_or_create(ca.cert_path.parent)


def test_corrupt_ca_key_is_an_error_naming_the_file(ca_dir: Path) -> None:
    CertificateAuthority.load_or_create(ca_dir)
    (ca_dir / "ca-key.pem").write_bytes(b"garbage")
    with pytest.raises(CAError, match=re.escape(str(ca_dir / "ca-key.pem"))):
        CertificateAuthority.load_or_create(ca_dir)


def test_unreadable_ca_cert_is_an_error_naming_the_file(ca_dir: Path) -> None:
    ca_dir.mkdir()
    (ca_dir / "ca-key.pem").write_bytes(b"")
    (ca_dir / "ca.pem").mkdir()
    with pytest.raises(CAError, match=re.escape(str(ca_dir / "ca.pem"))):
        CertificateAuthority.load_or_create(ca_dir)


def test_ca_cert_without_its_key_is_an_error_not_a_new_ca(ca_dir: Path) -> None:
    CertificateAuthority.load_or_create(ca_dir)
    cert_pem = (ca_dir / "ca.pem").read_bytes()
    (ca_dir / "ca-key.pem").unlink()
    with pytest.raises(CAError, match=r"ca-key\.pem is missing"):
        CertificateAuthority.load_or_create(ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == cert_pem


def test_ca_key_of_another_ca_is_an_error(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path / "a")
    CertificateAuthority.load_or_create(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "ca-key.pem", tmp_path / "a" / "ca-key.pem")
    with pytest.raises(CAError, match="is not the key of"):
        CertificateAuthority.load_or_create(tmp_path / "a")


# Leaves


@pytest.mark.parametrize("host", HOSTS)
def test_leaf_names_the_host_in_its_subject_and_san(ca: CertificateAuthority, host: str) -> None:
    leaf = leaf_for(ca, host)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == host
    assert leaf.issuer == ca.certificate.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    if host == "example.com":
        assert san.value.get_values_for_type(x509.DNSName) == ["example.com"]
        assert san.value.get_values_for_type(x509.IPAddress) == []
    else:
        assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(host)]
        assert san.value.get_values_for_type(x509.DNSName) == []


def test_leaf_is_an_end_entity_for_tls_servers(ca: CertificateAuthority) -> None:
    extensions = leaf_for(ca, "example.com").extensions
    constraints = extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    assert constraints.value.path_length is None
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign
    assert not usage.value.key_encipherment
    eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_leaf_key_identifiers_chain_to_the_ca(ca: CertificateAuthority) -> None:
    leaf = leaf_for(ca, "example.com")
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert not aki.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    assert aki.value.key_identifier == ca_ski.value.digest
    leaf.verify_directly_issued_by(ca.certificate)


def test_leaf_has_no_other_extensions(ca: CertificateAuthority) -> None:
    assert {type(ext.value) for ext in leaf_for(ca, "example.com").extensions} == {
        x509.BasicConstraints,
        x509.KeyUsage,
        x509.ExtendedKeyUsage,
        x509.SubjectAlternativeName,
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
    }


def test_leaf_lasts_90_days_from_yesterday(ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    leaf = leaf_for(ca, "example.com")
    assert abs(leaf.not_valid_before_utc - (now - dt.timedelta(days=1))) < dt.timedelta(minutes=1)
    assert abs(leaf.not_valid_after_utc - (now + dt.timedelta(days=90))) < dt.timedelta(minutes=1)
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert 0 < leaf.serial_number < 2**159


def test_all_leaves_share_one_p256_key(ca: CertificateAuthority, ca_dir: Path) -> None:
    leaf_key = serialization.load_pem_private_key((ca_dir / "leaf-key.pem").read_bytes(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    assert leaf_key.curve.name == "secp256r1"
    for host in HOSTS:
        assert leaf_for(ca, host).public_key() == leaf_key.public_key()
    assert leaf_key.public_key() != ca.certificate.public_key()


def test_long_host_has_a_truncated_common_name_and_a_full_san(ca: CertificateAuthority) -> None:
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(host) == 253
    leaf = leaf_for(ca, host)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == host[:64]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [host]


def test_hosts_differing_only_in_case_share_a_lowercase_leaf(ca: CertificateAuthority) -> None:
    assert ca.leaf_path("Example.COM") == ca.leaf_path("example.com")
    san = leaf_for(ca, "Example.COM").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["example.com"]


@pytest.mark.parametrize("host", [*HOSTS, "fe80::1:2", "::ffff:10.0.0.1", "under_score.example"])
def test_leaf_files_live_directly_in_the_leaves_dir(
    ca: CertificateAuthority, ca_dir: Path, host: str
) -> None:
    path = ca.leaf_path(host)
    assert path.parent == ca_dir / "leaves"
    assert ":" not in path.name
    ca.server_context(host)
    assert path.is_file()


def test_ipv6_and_dns_names_never_share_a_leaf_file(ca: CertificateAuthority) -> None:
    assert ca.leaf_path("::1") != ca.leaf_path("__1")


@pytest.mark.parametrize(
    "host",
    [
        "",
        "../x",
        "..",
        ".",
        "a/b",
        "a\\b",
        "a b",
        "a\x00b",
        "x" * 254,
        "example.com.",
        ".example.com",
        "a..b",
        "-a.example",
        "a-.example",
        "*.example.com",
        "[::1]",
        "fe80::1%eth0",
        "1.2.3",
        "01.2.3.4",
        "\u212a.example",  # KELVIN SIGN, which lower() turns into "k"
        "bücher.example",
        "a" * 64 + ".example",
    ],
)
def test_invalid_hosts_are_rejected(ca: CertificateAuthority, ca_dir: Path, host: str) -> None:
    with pytest.raises(InvalidHostError):
        ca.server_context(host)
    with pytest.raises(CAError):
        ca.leaf_path(host)
    assert list((ca_dir / "leaves").iterdir()) == []


def test_known_host_context_comes_from_memory(ca: CertificateAuthority) -> None:
    context = ca.server_context("example.com")
    ca.leaf_path("example.com").unlink()
    assert ca.server_context("example.com") is context
    assert not ca.leaf_path("example.com").exists()


def test_restart_reuses_the_leaf_on_disk_without_signing(
    ca_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = leaf_for(CertificateAuthority.load_or_create(ca_dir), "example.com")
    restarted = CertificateAuthority.load_or_create(ca_dir)

    def refuse_to_sign(*args: object, **kwargs: object) -> x509.Certificate:
        raise AssertionError("signed a new certificate")

    monkeypatch.setattr(x509.CertificateBuilder, "sign", refuse_to_sign)
    assert leaf_for(restarted, "example.com").serial_number == first.serial_number


def test_leaf_from_another_ca_is_reminted(tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    foreign = leaf_for(other, "example.com")
    # Same leaf key, so only the issuer differs.
    (tmp_path / "ca" / "leaves").mkdir(parents=True)
    shutil.copy(tmp_path / "other" / "leaf-key.pem", tmp_path / "ca" / "leaf-key.pem")
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    shutil.copy(other.leaf_path("example.com"), ca.leaf_path("example.com"))
    leaf = leaf_for(ca, "example.com")
    assert leaf.serial_number != foreign.serial_number
    leaf.verify_directly_issued_by(ca.certificate)


def test_leaf_naming_this_ca_but_signed_by_another_key_is_reminted(
    ca: CertificateAuthority, ca_dir: Path
) -> None:
    leaf_key = ca_key(ca_dir).public_key()  # any key; only the signature should be rejected
    forged = write_leaf(
        ca.leaf_path("example.com"),
        issuer=ca.certificate.subject,
        signing_key=ec.generate_private_key(ec.SECP256R1()),
        public_key=leaf_key,
        not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=30),
    )
    leaf = leaf_for(ca, "example.com")
    assert leaf.serial_number != forged.serial_number
    leaf.verify_directly_issued_by(ca.certificate)


def test_leaf_with_a_week_or_less_left_is_reminted(ca: CertificateAuthority, ca_dir: Path) -> None:
    leaf_key = serialization.load_pem_private_key((ca_dir / "leaf-key.pem").read_bytes(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    old = write_leaf(
        ca.leaf_path("example.com"),
        issuer=ca.certificate.subject,
        signing_key=ca_key(ca_dir),
        public_key=leaf_key.public_key(),
        not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=6),
    )
    leaf = leaf_for(ca, "example.com")
    assert leaf.serial_number != old.serial_number
    assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=89)


def test_corrupt_leaf_file_is_reminted(ca: CertificateAuthority) -> None:
    ca.leaf_path("example.com").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    leaf_for(ca, "example.com").verify_directly_issued_by(ca.certificate)


def test_new_leaf_key_makes_old_leaves_be_reminted(ca_dir: Path) -> None:
    old = leaf_for(CertificateAuthority.load_or_create(ca_dir), "example.com")
    (ca_dir / "leaf-key.pem").unlink()
    ca = CertificateAuthority.load_or_create(ca_dir)
    leaf = leaf_for(ca, "example.com")
    assert leaf.serial_number != old.serial_number
    handshake(ca.server_context("example.com"), strict_client_context(ca), "example.com")


def test_long_running_process_renews_a_leaf_before_it_expires(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = ca.server_context("example.com")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=85)
    monkeypatch.setattr(_ca, "_now", lambda: later)
    assert ca.server_context("example.com") is not context
    leaf = x509.load_pem_x509_certificate(ca.leaf_path("example.com").read_bytes())
    assert leaf.not_valid_after_utc > later + dt.timedelta(days=89)


# TLS and other verifiers


@pytest.mark.parametrize("host", HOSTS)
def test_strict_client_completes_a_handshake_and_gets_http11(
    ca: CertificateAuthority, host: str
) -> None:
    client = handshake(ca.server_context(host), strict_client_context(ca), host)
    assert client.selected_alpn_protocol() == "http/1.1"
    assert client.version() in {"TLSv1.2", "TLSv1.3"}


def test_client_offering_only_h2_gets_no_alpn(ca: CertificateAuthority) -> None:
    client_context = strict_client_context(ca)
    client_context.set_alpn_protocols(["h2"])
    client = handshake(ca.server_context("example.com"), client_context, "example.com")
    assert client.selected_alpn_protocol() is None


def test_server_context_refuses_tls_older_than_12(ca: CertificateAuthority) -> None:
    assert ca.server_context("example.com").minimum_version == ssl.TLSVersion.TLSv1_2


def test_leaf_is_refused_for_another_host(ca: CertificateAuthority) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ca.server_context("example.com"), strict_client_context(ca), "other.example")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
@pytest.mark.parametrize("host", HOSTS)
def test_openssl_strict_verify_accepts_the_leaf(ca: CertificateAuthority, host: str) -> None:
    ca.server_context(host)
    target = "-verify_hostname" if host == "example.com" else "-verify_ip"
    result = subprocess.run(
        [
            "openssl", "verify", "-x509_strict", "-purpose", "sslserver", target, host,
            "-CAfile", str(ca.cert_path), str(ca.leaf_path(host)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("certtool") is None, reason="no GnuTLS certtool")
@pytest.mark.parametrize("host", HOSTS)
def test_gnutls_verify_accepts_the_leaf(ca: CertificateAuthority, host: str) -> None:
    ca.server_context(host)
    result = subprocess.run(
        [
            "certtool", "--verify", "--load-ca-certificate", str(ca.cert_path),
            "--infile", str(ca.leaf_path(host)), "--verify-hostname", host,
            "--verify-purpose", ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Chain verification output: Verified" in result.stdout


def test_the_contexts_kept_in_memory_are_bounded_least_recently_used_first(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A forward proxy meets new hosts for as long as it runs: each kept context is ~20 KB.
    monkeypatch.setattr(_ca, "LEAF_CONTEXTS_KEPT", 3)
    first = {host: ca.server_context(host) for host in ("a.test", "b.test", "c.test")}
    assert ca.server_context("a.test") is first["a.test"]  # a.test used last, b.test least
    ca.server_context("d.test")
    assert ca.server_context("a.test") is first["a.test"]
    assert ca.server_context("c.test") is first["c.test"]
    assert ca.server_context("b.test") is not first["b.test"]  # dropped, loaded again
