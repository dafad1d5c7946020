"""An LRU cache with expiry for adapted per-user parameters.

Keys are ``(user_id, support_hash, part)``: a new interaction or new stored feedback changes
the support hash, so an entry is never stale in content, only old. Values are whatever the
model returns from ``adapt_user`` (small per-user tensors); the base weights are never
stored here, only referenced by the values.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np


def support_hash(item_idx: np.ndarray, rating: np.ndarray, timestamp: np.ndarray) -> str:
    """sha256 of the support's (item, rating, time) rows in order: equal supports, equal key."""
    h = hashlib.sha256()
    for a, dtype in ((item_idx, np.int64), (rating, np.float32), (timestamp, np.int64)):
        b = np.ascontiguousarray(a, dtype=dtype)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b.tobytes())
    return h.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0


class AdaptedCache:
    """Thread-safe LRU of at most ``max_entries`` values, each living ``ttl_s`` seconds.

    ``get_or_compute`` runs ``compute`` outside the lock, so a slow adaptation never blocks
    other users; two concurrent misses on one key both compute and the later write wins
    (the values are equal, adaptation is deterministic)."""

    def __init__(
        self,
        max_entries: int = 4096,
        ttl_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 0 or ttl_s <= 0:
            raise ValueError("AdaptedCache: max_entries >= 0 and ttl_s > 0")
        self.max_entries, self.ttl_s, self._clock = max_entries, ttl_s, clock
        self._data: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> object | None:
        now = self._clock()
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            born, value = entry
            if now - born >= self.ttl_s:
                del self._data[key]
                self.stats.expirations += 1
                self.stats.misses += 1
                return None
            self._data.move_to_end(key)
            self.stats.hits += 1
            return value

    def put(self, key: Hashable, value: object) -> None:
        if self.max_entries == 0:
            return
        now = self._clock()
        with self._lock:
            self._data[key] = (now, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                self.stats.evictions += 1

    def get_or_compute(self, key: Hashable, compute: Callable[[], object]) -> object:
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
