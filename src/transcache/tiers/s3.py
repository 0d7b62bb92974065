"""S3-compatible storage (AWS S3, R2, GCS interoperability, MinIO, SeaweedFS, Ceph RGW) as a
`Bucket`: botocore finds the endpoint, region and credentials by the AWS conventions and signs
each request (SigV4); the bytes travel over the proxy's own trio HTTP client (`UpstreamPool`),
so nothing blocks the event loop and nothing reads the environment's proxy variables (which
point at transcache itself). docs/team.md says why this and not obstore, with numbers.

The pool is the proxy's own, with a configuration of its own: the endpoint is reached
whatever the destination rules say (it was configured, like a parent proxy), in offline mode
too (the tier is a cache, not an origin), and through `--upstream-proxy` only when one was
given as an option or in the config file, never one from the environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import trio

from .._config import Config
from .._errors import ProxyError
from .._parent import SCHEME_VARIABLES
from .._protocol import Headers, Origin
from .._upstream import BodyReader, UpstreamPool, UpstreamResponse, replay
from .bucket import Listed, Location, TierError

DEFAULT_REGION = "us-east-1"
# Bodies over MULTIPART_BYTES go up in parts of PART_BYTES (S3's minimum part is 5 MiB),
# read from the file in FILE_CHUNK pieces: memory stays flat whatever the body's size.
MULTIPART_BYTES = 32 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
FILE_CHUNK = 1024 * 1024
# An upload may take its timeout plus this long per byte (1 MiB/s at the slowest) before it
# is given up: a stalled bucket must not hold an uploader forever.
SECONDS_PER_UPLOADED_BYTE = 1 / (1024 * 1024)
UNSIGNED = "UNSIGNED-PAYLOAD"
XML_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
LIST_PAGE = 1000
ENVIRONMENT_SOURCES = frozenset(name for names in SCHEME_VARIABLES.values() for name in names)


@dataclass(frozen=True)
class Endpoint:
    """Where requests go and how they are signed, as the AWS conventions say."""

    url: str
    region: str
    credentials: Any  # botocore Credentials, or None: anonymous requests
    path_style: bool


def find_endpoint(environ: Mapping[str, str] | None = None) -> Endpoint:
    """AWS_ENDPOINT_URL(_S3), AWS_REGION, AWS_PROFILE, the AWS_* keys and the shared config
    and credentials files: botocore's own lookup (import deferred: it is only needed with a
    shared tier)."""
    import botocore.session
    from botocore.configprovider import ConfiguredEndpointProvider

    environ = os.environ if environ is None else environ
    session = botocore.session.Session()
    region = session.get_config_variable("region") or DEFAULT_REGION
    configured = ConfiguredEndpointProvider(
        full_config=session.full_config,
        scoped_config=session.get_scoped_config(),
        client_name="s3",
        environ=environ,
    ).provide()
    url = configured or f"https://s3.{region}.amazonaws.com"
    return Endpoint(url.rstrip("/"), region, session.get_credentials(), configured is not None)


def tier_config(config: Config, origin: Origin) -> Config:
    """The proxy's configuration as the tier's pool uses it (see the module comment)."""
    parents = {
        scheme: parent
        for scheme, parent in config.upstream_proxies.items()
        if parent.source not in ENVIRONMENT_SOURCES
    }
    return dataclasses.replace(
        config,
        offline=False,
        # Reachable whatever the destination rules say; a --resolve entry of the user's for
        # it still says where.
        resolve={(origin.host, origin.port): origin.host, **config.resolve},
        upstream_proxies=parents,
        connect_timeout=config.shared_cache_timeout,
        upstream_timeout=config.shared_cache_timeout,
    )


class S3Object:
    """An object's body as it arrives."""

    def __init__(self, response: UpstreamResponse, size: int) -> None:
        self.size = size
        self._response = response

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except ProxyError as exc:
            raise TierError(f"reading from the shared cache: {exc}") from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class S3Bucket:
    def __init__(self, location: Location, config: Config, endpoint: Endpoint) -> None:
        self.location = location
        self.endpoint = endpoint
        parts = urlsplit(endpoint.url)
        scheme = parts.scheme or "https"
        host = parts.hostname or ""
        if not endpoint.path_style:
            host = f"{location.bucket}.{host}"
        self._origin = Origin(scheme, host, parts.port or (443 if scheme == "https" else 80))
        self._host = host if parts.port is None else f"{host}:{parts.port}"
        self._base = "" if not endpoint.path_style else f"/{location.bucket}"
        self._timeout = config.shared_cache_timeout
        self._pool = UpstreamPool(tier_config(config, self._origin))

    def __str__(self) -> str:
        return f"{self.location} at {self.endpoint.url}"

    def _key(self, name: str) -> str:
        return f"{self.location.prefix}/{name}" if self.location.prefix else name

    # -- the Bucket interface ------------------------------------------------------------------

    async def get(self, name: str) -> S3Object | None:
        response = await self._send(b"GET", self._key(name))
        if response.status == 404:
            await _read_all(response)
            return None
        await self._check(response, f"GET {name}")
        length = next((v for k, v in response.headers if k.lower() == b"content-length"), None)
        if length is None or not length.isdigit():
            await response.aclose()
            raise TierError(f"GET {name}: the shared cache sent no Content-Length")
        return S3Object(response, int(length))

    async def exists(self, name: str) -> bool:
        response = await self._send(b"HEAD", self._key(name))
        await _read_all(response)
        if response.status == 404:
            return False
        await self._check(response, f"HEAD {name}")
        return True

    async def put(self, name: str, data: bytes) -> None:
        response = await self._send(b"PUT", self._key(name), body=data)
        await self._check(response, f"PUT {name}")
        await _read_all(response)

    async def put_file(self, name: str, path: Path, size: int) -> None:
        if size <= MULTIPART_BYTES:
            response = await self._send(
                b"PUT", self._key(name), stream=(_file_reader(path, 0, size), size)
            )
            await self._check(response, f"PUT {name}")
            await _read_all(response)
            return
        await self._put_parts(name, path, size)

    async def list(self, under: str) -> list[Listed]:
        found: list[Listed] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": self._key(under), "max-keys": str(LIST_PAGE)}
            if token is not None:
                query["continuation-token"] = token
            root = await self._xml(b"GET", "", query, f"list {under}")
            strip = len(self._key(""))
            for item in root.iter(f"{XML_NS}Contents"):
                key = item.findtext(f"{XML_NS}Key") or ""
                stamp = item.findtext(f"{XML_NS}LastModified") or ""
                found.append(Listed(key[strip:], _timestamp(stamp)))
            token = root.findtext(f"{XML_NS}NextContinuationToken")
            if root.findtext(f"{XML_NS}IsTruncated") != "true" or not token:
                return found

    async def delete(self, name: str) -> None:
        response = await self._send(b"DELETE", self._key(name))
        await self._check(response, f"DELETE {name}")
        await _read_all(response)

    async def aclose(self) -> None:
        await self._pool.aclose()

    # -- multipart -----------------------------------------------------------------------------

    async def _put_parts(self, name: str, path: Path, size: int) -> None:
        """Upload in parts; the object appears only when the last request completes it, and
        an upload that fails is aborted (so the bucket keeps no orphaned parts)."""
        key = self._key(name)
        root = await self._xml(b"POST", key, {"uploads": ""}, f"start upload of {name}")
        upload = root.findtext(f"{XML_NS}UploadId")
        if not upload:
            raise TierError(f"start upload of {name}: the shared cache gave no upload id")
        try:
            etags = []
            for number, offset in enumerate(range(0, size, PART_BYTES), start=1):
                length = min(PART_BYTES, size - offset)
                query = {"partNumber": str(number), "uploadId": upload}
                response = await self._send(
                    b"PUT", key, query, stream=(_file_reader(path, offset, length), length)
                )
                await self._check(response, f"upload part {number} of {name}")
                etag = next((v for k, v in response.headers if k.lower() == b"etag"), b"")
                await _read_all(response)
                etags.append(etag.decode("latin-1"))
            listed = "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                for n, etag in enumerate(etags, start=1)
            )
            body = f"<CompleteMultipartUpload>{listed}</CompleteMultipartUpload>".encode()
            response = await self._send(b"POST", key, {"uploadId": upload}, body=body)
            await self._check(response, f"complete upload of {name}")
            answer = await _read_all(response)
            if b"<Error>" in answer:  # S3 may report a failed completion inside a 200
                raise TierError(f"complete upload of {name}: {answer[:200]!r}")
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(self._timeout):
                response = await self._send(b"DELETE", key, {"uploadId": upload})
                await _read_all(response)
            raise

    # -- requests ------------------------------------------------------------------------------

    async def _xml(self, method: bytes, key: str, query: dict[str, str], what: str) -> ET.Element:
        response = await self._send(method, key, query)
        await self._check(response, what)
        try:
            return ET.fromstring(await _read_all(response))
        except ET.ParseError as exc:
            raise TierError(f"{what}: the shared cache's answer is not XML ({exc})") from exc

    async def _send(
        self,
        method: bytes,
        key: str,
        query: dict[str, str] | None = None,
        *,
        body: bytes | None = None,
        stream: tuple[BodyReader, int] | None = None,
    ) -> UpstreamResponse:
        """Sign and send one request; returns once its head arrived, within the timeout.
        `body` is signed; a `stream` (reader, length) goes unsigned (S3 allows it)."""
        target = self._base + "/" + quote(key, safe="/~")
        if query:
            target += "?" + urlencode(sorted(query.items()), safe="~")
        headers = await self._signed(method, target, None if stream is not None else body)
        length = stream[1] if stream is not None else len(body or b"")
        if method in (b"PUT", b"POST"):
            headers.append((b"Content-Length", str(length).encode()))
        reader = stream[0] if stream is not None else (replay(body) if body else None)
        try:
            with trio.fail_after(self._timeout + length * SECONDS_PER_UPLOADED_BYTE):
                return await self._pool.request(
                    self._origin, method, target.encode(), headers, reader
                )
        except trio.TooSlowError as exc:
            raise TierError(f"the shared cache did not answer within {self._timeout} s") from exc
        except ProxyError as exc:
            raise TierError(f"the shared cache: {exc}") from exc

    async def _signed(self, method: bytes, target: str, body: bytes | None) -> Headers:
        """The request's headers, signed when there are credentials; `body` None means a
        streamed body, sent as UNSIGNED-PAYLOAD (S3 allows it; a blob is checked against
        its sha256 when read back anyway)."""
        headers: Headers = [(b"Host", self._host.encode()), (b"Accept-Encoding", b"identity")]
        credentials = self.endpoint.credentials
        if credentials is None:  # anonymous: a bucket that allows it
            payload = UNSIGNED if body is None else hashlib.sha256(body).hexdigest()
            return [*headers, (b"X-Amz-Content-SHA256", payload.encode())]
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        # Refreshing credentials (STS, SSO) may block: then in a worker thread. Static keys,
        # or refreshable ones still fresh, are read here without a thread hop per request.
        refresh_needed = getattr(credentials, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            frozen = await trio.to_thread.run_sync(credentials.get_frozen_credentials)
        else:
            frozen = credentials.get_frozen_credentials()
        url = f"{self._origin.scheme}://{self._host}{target}"
        request = AWSRequest(method=method.decode(), url=url, data=body or b"")
        signing = {"payload_signing_enabled": body is not None}
        request.context["client_config"] = SimpleNamespace(s3=signing)
        S3SigV4Auth(frozen, "s3", self.endpoint.region).add_auth(request)
        return headers + [(k.encode(), v.encode()) for k, v in request.headers.items()]

    async def _check(self, response: UpstreamResponse, what: str) -> None:
        if 200 <= response.status < 300:
            return
        detail = (await _read_all(response))[:300].decode("utf-8", "replace")
        code = detail.partition("<Code>")[2].partition("</Code>")[0]
        raise TierError(f"{what}: the shared cache answered {response.status} {code}".rstrip())


def _file_reader(path: Path, offset: int, length: int) -> BodyReader:
    """`length` bytes of `path` from `offset`, a piece at a time (the file is a published,
    content-addressed blob: its bytes do not change). Each piece opens the file anew, so an
    upload given up halfway leaves no descriptor open."""
    position, end = offset, offset + length

    async def read() -> bytes:
        nonlocal position
        if position >= end:
            return b""
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.pread(fd, min(FILE_CHUNK, end - position), position)
            finally:
                os.close(fd)
        except OSError as exc:
            raise TierError(f"cannot read {path} to upload it: {exc}") from exc
        if not data:
            raise TierError(f"{path} is shorter than it was")
        position += len(data)
        return data

    return read


async def _read_all(response: UpstreamResponse) -> bytes:
    parts = []
    try:
        while chunk := await response.read():
            parts.append(chunk)
    except ProxyError as exc:
        raise TierError(f"the shared cache broke off: {exc}") from exc
    return b"".join(parts)


def _timestamp(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
