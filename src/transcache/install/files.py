"""How install reads and writes files: its own files atomically (temp file, then rename), a
user's file in place (it keeps its inode, mode, owner and any symlink pointing at it), and a
user's text decoded so that any bytes survive the round trip unchanged."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes) -> str:
    return data.decode(TEXT_ENCODING, TEXT_ERRORS)


def encode(text: str) -> bytes:
    return text.encode(TEXT_ENCODING, TEXT_ERRORS)


def read(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_in_place(path: Path, data: bytes) -> None:
    with path.open("r+b") as f:
        f.write(data)
        f.truncate()
