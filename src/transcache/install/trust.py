"""What every trust store module shares: the CA as the stores see it, a name stamped with the
CA's serial (so uninstall removes exactly our certificate, never another transcache CA), and
the sudo prefix for stores that belong to root."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

NAME_PREFIX = "transcache"
SERIAL_HEX_IN_NAME = 16


@dataclass(frozen=True)
class TrustedCA:
    path: Path
    pem: bytes
    serial: int
    sha1: str  # fingerprint, upper-case hex, as macOS `security` prints it

    @classmethod
    def from_file(cls, path: Path) -> TrustedCA:
        pem = path.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(path, pem, cert.serial_number, hashlib.sha1(der).hexdigest().upper())

    @property
    def name(self) -> str:
        return f"{NAME_PREFIX}-{self.serial:x}"[: len(NAME_PREFIX) + 1 + SERIAL_HEX_IN_NAME]


def sudo() -> tuple[str, ...]:
    return () if os.geteuid() == 0 else ("sudo",)
