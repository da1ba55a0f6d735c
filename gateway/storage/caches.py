"""Per-process caches of the rows every call reads (API keys, connections).

Made once per engine by `Database` at start-up. Entries live a couple of seconds, and when a cache
is full the least recently used entry goes first (cachetools' LRUCache), so a burst of new keys
evicts the cold ones rather than emptying the cache. A change made in this process drops its
entry at once; a change made in another process is seen within the TTL. Database threads and the
event loop both use them, so every operation holds a lock (each is a dictionary operation).

Each entry carries its own expiry, checked when it is read. cachetools' TTLCache does the same
job but sweeps its expired entries on every read, which made a lookup several times dearer, and a
call makes five (docs/benchmarks.md); an expired entry here waits to be replaced or evicted.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import cachetools
from sqlalchemy.engine import Engine

V = TypeVar("V")

# A revoked or narrowed key, a reconnected account: seen by other processes within this bound.
SECONDS = 2.0
ENTRIES = 10_000


class Cache(Generic[V]):
    def __init__(self, ttl: float = SECONDS, maxsize: int = ENTRIES) -> None:
        self.ttl = ttl
        self._data: cachetools.LRUCache[Hashable, tuple[float, V]] = cachetools.LRUCache(maxsize)
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._data.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, key: Hashable, value: V) -> None:
        entry = (time.monotonic() + self.ttl, value)
        with self._lock:
            self._data[key] = entry

    def drop(self, key: Hashable) -> None:
        with self._lock:
            self._data.pop(key, None)

    def drop_where(self, predicate: Callable[[Hashable, V], bool]) -> None:
        with self._lock:
            for key in [k for k, (_, v) in self._data.items() if predicate(k, v)]:
                self._data.pop(key, None)


# A key's last use is written at most this often per process.
TOUCH_SECONDS = 60.0


class Caches:
    def __init__(self) -> None:
        self.keys: Cache[object] = Cache()
        self.connections: Cache[object] = Cache()
        # An owner's end users by their external id: made once, renamed rarely, deleted by the owner.
        self.end_users: Cache[object] = Cache()
        # Keys whose last use was written recently: their next use writes nothing.
        self.touched: Cache[bool] = Cache(TOUCH_SECONDS)


# The caches of each engine, dropped with it. Keyed by the engine itself, never by id(): a new
# engine can reuse a disposed one's id.
_owned: weakref.WeakKeyDictionary[Engine, Caches] = weakref.WeakKeyDictionary()


def of(engine: Engine) -> Caches:
    """The engine's caches, made now if it has none (at start-up, by Database)."""
    found = _owned.get(engine)
    if found is None:
        found = _owned[engine] = Caches()
    return found
