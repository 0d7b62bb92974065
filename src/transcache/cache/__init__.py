"""The caching layer: decide (pure, `decide`) what a request gets, then do it (`cache`),
sharing downloads in flight (`flight`)."""

from .cache import Cache
from .decide import Outcome
from .keys import CacheRequest
from .sources import ResponseSource

__all__ = ["Cache", "CacheRequest", "Outcome", "ResponseSource"]
