"""The in-process tier: an LRU bounded by the bytes it holds."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

from ..entry import Entry
from ..reads import Source
from .base import Tier


class MemoryTier(Tier):
    name = Source.MEMORY

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

    def with_tag(self, tag: str) -> list[Entry]:
        """The entries labelled ``tag`` (a scan: tag invalidation is rare)."""
        with self._lock:
            return [e for e in self._entries.values() if tag in e.tags]

    def tagged(self, tag: str) -> list[tuple[str, str, str]]:
        return [(e.key_hash, e.name, e.endpoint) for e in self.with_tag(tag)]

    def age_to(self, keys: list[tuple[str, str]], fetched_at: float) -> int:
        aged = 0
        with self._lock:
            for key_hash, _ in keys:
                old = self._entries.get(key_hash)
                if old is not None and old.fetched_at > fetched_at:
                    # Older than what is held, on purpose: writes are monotonic elsewhere.
                    self._entries[key_hash] = dataclasses.replace(old, fetched_at=fetched_at)
                    aged += 1
        return aged

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
