"""A small per-process cache whose entries live a couple of seconds.

Used on the hot path for rows that every call reads and that rarely change
(an API key, a connection). A change made in this process drops the entry at
once; a change made in another process is seen within `ttl` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, V]] = {}

    def get(self, key: Hashable) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            self._entries.pop(key, None)
            return None
        return found[1]

    def put(self, key: Hashable, value: V) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude, but bounded: the hot set refills within one ttl
        self._entries[key] = (time.monotonic() + self.ttl, value)

    def drop(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def drop_where(self, predicate) -> None:  # type: ignore[no-untyped-def]
        for key in [k for k, (_, v) in self._entries.items() if predicate(k, v)]:
            self._entries.pop(key, None)
