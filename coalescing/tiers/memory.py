"""The in-process tier: an LRU bounded by the bytes it holds."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..entry import Entry
from .base import Tier


class MemoryTier(Tier):
    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # guards _entries and _bytes; never held across I/O
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0

    def get(self, key_hash: str, name: str = "") -> Entry | None:
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is not None:
                self._entries.move_to_end(key_hash)
            return entry

    def set(self, entry: Entry, lifetime_ms: int = 0) -> None:
        if entry.size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.get(entry.key_hash)
            if old is not None:
                if old.fetched_at > entry.fetched_at:
                    return  # monotonic: never replace a newer value
                self._bytes -= old.size
            self._entries[entry.key_hash] = entry
            self._entries.move_to_end(entry.key_hash)
            self._bytes += entry.size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size

    def delete(self, key_hash: str, name: str = "") -> None:
        with self._lock:
            old = self._entries.pop(key_hash, None)
            if old is not None:
                self._bytes -= old.size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
