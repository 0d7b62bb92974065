"""Which metadata read from the shared tier is believed. Anyone who can write to the bucket
could otherwise serve content to every reader, so metadata can be signed (Ed25519) by writers
and checked by readers: with a verify key, an unsigned or mis-signed record is ignored. The
body needs no signature: the signed record names it by its sha256, and the body is checked
against that before it is served as complete or stored.

An object in the tier is {"record": ..., "signature": base64 or null}; the signature covers
the record's canonical JSON (sorted keys, no spaces)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bucket import TierError


class TrustError(TierError):
    """A key file that cannot be used; the message names it and says why."""


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Trust:
    """The keys: a private one to sign what this proxy uploads, a public one to check what it
    reads (None: the bucket is trusted as it is)."""

    signing: Any = None  # Ed25519PrivateKey
    verifying: Any = None  # Ed25519PublicKey

    @property
    def trusts_bucket_as_is(self) -> bool:
        return self.verifying is None

    def seal(self, record: dict[str, Any]) -> bytes:
        """The object holding `record`, signed when there is a signing key."""
        signature = None
        if self.signing is not None:
            signature = base64.b64encode(self.signing.sign(canonical(record))).decode()
        return json.dumps({"record": record, "signature": signature}).encode()

    def open(self, data: bytes) -> dict[str, Any] | None:
        """The record in an object, or None when it is unreadable, or a verify key is set and
        the signature is missing or wrong."""
        from cryptography.exceptions import InvalidSignature

        try:
            wrapper = json.loads(data)
            record, signature = wrapper["record"], wrapper["signature"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(record, dict):
            return None
        if self.verifying is None:
            return record
        if not isinstance(signature, str):
            return None
        try:
            self.verifying.verify(base64.b64decode(signature, validate=True), canonical(record))
        except (InvalidSignature, binascii.Error, ValueError):
            return None
        return record


def load_trust(signing_key: Path | None, verify_key: Path | None) -> Trust:
    """Read the PEM key files (`transcache cache keygen` writes a pair)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    signing = verifying = None
    try:
        if signing_key is not None:
            signing = serialization.load_pem_private_key(signing_key.read_bytes(), None)
            if not isinstance(signing, Ed25519PrivateKey):
                raise TrustError(f"{signing_key} is not an Ed25519 private key")
        if verify_key is not None:
            verifying = serialization.load_pem_public_key(verify_key.read_bytes())
            if not isinstance(verifying, Ed25519PublicKey):
                raise TrustError(f"{verify_key} is not an Ed25519 public key")
    except (OSError, ValueError) as exc:
        raise TrustError(f"cannot use the shared cache key: {exc}") from exc
    return Trust(signing, verifying)


def generate_pair(private: Path, public: Path) -> None:
    """Write a new Ed25519 key pair: the private key 0600 (writers), the public key
    (readers)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..store.layout import write_private

    key = Ed25519PrivateKey.generate()
    write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
