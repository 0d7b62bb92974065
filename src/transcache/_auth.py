"""Who may use a shared transcache: the users of an auth file, by HTTP Basic credentials.

The auth file holds one `user:token` per line (`#` comments and blank lines allowed). It must
be private to its owner: a file that grants its group or others any access is refused, since
anyone who reads it can use the proxy as anyone. `SIGHUP` re-reads it.

A client proves who it is with `Proxy-Authorization: Basic` on every CONNECT and every
absolute-form request (a request inside an authenticated tunnel belongs to that tunnel's
user), or with `Authorization: Basic` on a request to the proxy's own pages. Tokens are
compared in constant time, and a user name that does not exist costs the same comparison.

A Python API tag rides in the user name: `USER~TAG` (tags use URL-unreserved characters, and
`~` may not appear in a user name), so per-test accounting works on an authenticated proxy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import stat
from dataclasses import dataclass
from pathlib import Path

from ._config import ConfigError
from ._errors import ProxyAuthRequiredError, UnauthorizedError
from ._protocol import Headers, header_value

REALM = b'Basic realm="transcache"'
TAG_SEPARATOR = "~"
# What an unknown user's token is compared with, so that a miss takes as long as a hit.
_NOBODY = hashlib.sha256(b"transcache: no such user").digest()


@dataclass(frozen=True)
class Identity:
    """What a client's credentials say: the user (None when they prove nothing), the tag."""

    user: str | None
    tag: str | None


ANONYMOUS = Identity(None, None)
# The proxy's own pages anyone may read: a health check, and the CA certificate that clients
# must trust before they can authenticate through a tunnel.
PUBLIC_PAGES = frozenset({"/healthz", "/ca.pem"})


class Gate:
    """Admits requests: with an auth file, proxy requests need a user's credentials (407
    otherwise) and so do the proxy's own pages but the public ones (401); without one,
    everything is admitted as before. Either way it tells whom a request is for (user, tag)."""

    def __init__(self, credentials: Credentials | None) -> None:
        self.credentials = credentials

    def proxy(self, headers: Headers, inside: Identity) -> Identity:
        """A CONNECT, or a request for an origin; `inside` is the tunnel's identity."""
        if inside.user is not None:
            return inside  # the CONNECT proved it
        who = identity(headers, self.credentials, b"proxy-authorization")
        if self.credentials is not None and who.user is None:
            raise ProxyAuthRequiredError("this proxy needs a user's credentials (Basic)")
        return Identity(who.user, who.tag or inside.tag)

    def admin(self, headers: Headers, inside: Identity, path: str) -> Identity:
        """A request for one of the proxy's own pages: through the proxy (Proxy-Authorization,
        or inside a tunnel) or to it directly (Authorization, as a browser sends)."""
        who = inside
        for field in (b"proxy-authorization", b"authorization"):
            given = identity(headers, self.credentials, field)
            if given.user is not None or given.tag is not None:
                who = Identity(given.user or inside.user, given.tag or inside.tag)
                break
        page = path.partition("?")[0]
        if self.credentials is None or page in PUBLIC_PAGES or who.user is not None:
            return who
        raise UnauthorizedError(f"{page} needs a user's credentials (Basic)")


class Credentials:
    """The users of an auth file; `check` says who a request's credentials belong to."""

    def __init__(self, tokens: dict[str, bytes], path: Path) -> None:
        self._digests = {user: hashlib.sha256(token).digest() for user, token in tokens.items()}
        self.path = path

    @property
    def users(self) -> list[str]:
        return sorted(self._digests)

    @classmethod
    def load(cls, path: Path) -> Credentials:
        """Read an auth file; ConfigError names the file and what is wrong with it."""
        try:
            info = path.stat()
            if stat.S_IMODE(info.st_mode) & 0o077:
                raise ConfigError(
                    f"{path}: the auth file grants its group or others access "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
                )
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the auth file: {exc}") from exc
        tokens: dict[str, bytes] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, token = line.partition(":")
            if not sep or not user or not token or TAG_SEPARATOR in user:
                raise ConfigError(
                    f"{path}:{number}: expected USER:TOKEN (a user name without ':' or '~')"
                )
            tokens[user] = token.encode()
        if not tokens:
            raise ConfigError(f"{path}: the auth file names no user")
        return cls(tokens, path)

    def check(self, header: bytes | None) -> Identity:
        """The identity a Basic credential proves: its user when the token matches, else
        user None. The tag is read either way."""
        credential = basic_credential(header)
        if credential is None:
            return Identity(None, None)
        name, token = credential
        user, _, tag = name.partition(TAG_SEPARATOR)
        expected = self._digests.get(user, _NOBODY)
        matches = hmac.compare_digest(expected, hashlib.sha256(token.encode()).digest())
        return Identity(user if matches and user in self._digests else None, tag or None)


def basic_credential(header: bytes | None) -> tuple[str, str] | None:
    """(name, token) of a Basic credential's value; None when there is none or it is
    malformed."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, _, token = decoded.partition(":")
    return (name, token) if name else None


def identity(headers: Headers, credentials: Credentials | None, field: bytes) -> Identity:
    """Who the request's `field` (proxy-authorization or authorization) says it is. Without
    an auth file every request is anonymous, and its whole user name is its tag (the API's
    per-test accounting)."""
    value = header_value(headers, field)
    if credentials is not None:
        return credentials.check(value)
    credential = basic_credential(value)
    return Identity(None, credential[0] if credential else None)
