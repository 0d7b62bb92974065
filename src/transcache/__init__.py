"""transcache: a caching HTTPS forward proxy for package installs and git fetches."""

from ._config import Config
from ._errors import ProxyError

__all__ = ["Config", "ProxyError"]
