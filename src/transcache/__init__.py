"""transcache: a caching HTTPS forward proxy for package installs and git fetches."""

from ._config import Config
from ._errors import ProxyError
from .api import Proxy, RunningProxy, open_proxy

__all__ = ["Config", "Proxy", "ProxyError", "RunningProxy", "open_proxy"]
