"""Pages the proxy serves under https://transcache.invalid/doctor/ so that `transcache doctor`
can make each client do one real fetch of its own kind through the proxy, with no origin on
the network: a simple index and a tiny generated wheel (pip, uv), a dumb-HTTP git repository
advertisement (git ls-remote), a sparse cargo registry with a search API (cargo search), and
npm's ping. The host never resolves, so an answer proves the client used the proxy and
trusted its CA."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import zipfile
from collections.abc import Callable

PREFIX = "/doctor"
DOCTOR_URL = "https://transcache.invalid" + PREFIX
PROJECT = "transcache-doctor"
WHEEL_NAME = "transcache_doctor-1.0-py3-none-any.whl"
# A well-formed object id for the advertised ref; ls-remote only lists it.
GIT_REF_ID = "0" * 39 + "1"
HTML = b"text/html; charset=utf-8"
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"

# A page for the proxy's admin registry: () -> (status, content type, body).
Page = Callable[[], tuple[int, bytes, bytes]]


@functools.cache
def doctor_wheel() -> bytes:
    """A valid, empty wheel: METADATA, WHEEL and a RECORD that hashes them."""
    dist_info = "transcache_doctor-1.0.dist-info"
    files = {
        f"{dist_info}/METADATA": b"Metadata-Version: 2.1\nName: transcache-doctor\nVersion: 1.0\n",
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: transcache\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _simple_page() -> tuple[int, bytes, bytes]:
    digest = hashlib.sha256(doctor_wheel()).hexdigest()
    href = f"{PREFIX}/files/{WHEEL_NAME}#sha256={digest}"
    body = f'<!DOCTYPE html><html><body><a href="{href}">{WHEEL_NAME}</a></body></html>\n'
    return 200, HTML, body.encode()


def _json(data: object) -> Page:
    body = json.dumps(data).encode()
    return lambda: (200, JSON, body)


def pages() -> dict[str, Page]:
    return {
        f"{PREFIX}/simple/{PROJECT}/": _simple_page,
        f"{PREFIX}/files/{WHEEL_NAME}": lambda: (
            200,
            b"application/octet-stream",
            doctor_wheel(),
        ),
        f"{PREFIX}/git/doctor.git/info/refs": lambda: (
            200,
            TEXT,
            f"{GIT_REF_ID}\trefs/heads/main\n".encode(),
        ),
        f"{PREFIX}/git/doctor.git/HEAD": lambda: (200, TEXT, b"ref: refs/heads/main\n"),
        f"{PREFIX}/cargo/config.json": _json(
            {"dl": f"{DOCTOR_URL}/cargo/dl", "api": f"{DOCTOR_URL}/cargo"}
        ),
        f"{PREFIX}/cargo/api/v1/crates": _json({"crates": [], "meta": {"total": 0}}),
        f"{PREFIX}/npm/-/ping": _json({}),
    }
