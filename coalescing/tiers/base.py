"""The interface every tier implements, and the one error they raise.

A tier wraps whatever its backend raises in :class:`TierError` (``raise ...
from e``); the coalescer alone decides what a failed tier means (a miss,
logged and counted), so no backend error ever reaches a caller.
"""

from __future__ import annotations

import abc

from ..entry import Entry


class TierError(Exception):
    """A tier could not read or write; its backend error is ``__cause__``."""


class Tier(abc.ABC):
    #: Short name shown in ``Cache-Status`` ``detail=`` and in metrics.
    name: str = ""
    #: ``set`` only buffers, so it is taken even while the tier is failing.
    buffers_writes: bool = False

    # ``name`` is the entry's single-flight name: the Redis tier keeps one
    # name's keys on one cluster shard with it; other tiers ignore it.
    @abc.abstractmethod
    def get(self, key_hash: str, name: str = "") -> Entry | None: ...

    @abc.abstractmethod
    def set(self, entry: Entry, lifetime_ms: int) -> None:
        """Store ``entry`` unless the tier holds a newer one (writes are monotonic)."""

    @abc.abstractmethod
    def delete(self, key_hash: str, name: str = "") -> None: ...

    # -- by tag: what a tier that keeps tags does (soft and hard purge) ------

    def tagged(self, tag: str) -> list[tuple[str, str, str]]:
        """``(key hash, name, endpoint)`` of the entries labelled ``tag``."""
        return []

    def age_to(self, keys: list[tuple[str, str]], fetched_at: float) -> int:
        """Make these ``(key hash, name)`` entries no younger than ``fetched_at``."""
        return 0

    def delete_many(self, keys: list[tuple[str, str]]) -> int:
        for key_hash, name in keys:
            self.delete(key_hash, name)
        return len(keys)

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Write out anything buffered (on shutdown and in tests)."""

    def close(self) -> None:
        """Write out anything buffered and let go of threads and connections."""
        self.flush()
