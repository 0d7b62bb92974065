"""transcache: a caching HTTPS forward proxy for package installs and git fetches.

The public names load on first use (PEP 562): the command line and the pytest plugin import
this package, and must not pay for trio, h11 and cryptography before a proxy runs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import Config
    from ._errors import ProxyError
    from .api import Proxy, RunningProxy, open_proxy

__all__ = ["Config", "Proxy", "ProxyError", "RunningProxy", "open_proxy"]

# Each public name, and the module that defines it.
_EXPORTS = {
    "Config": "._config",
    "ProxyError": "._errors",
    "Proxy": ".api",
    "RunningProxy": ".api",
    "open_proxy": ".api",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
