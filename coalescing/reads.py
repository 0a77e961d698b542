"""What a read is asked and what it gives: the types of the read path.

Plain data, no Django and no I/O: the coalescer, the endpoints, the
function API, the responses and the cross-process flight all speak them.

    Lookup  --(Coalescer.get)-->  Outcome (one per flight)  -->  Answer (one per caller)
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Protocol

from .entry import Entry, Policy, State
from .errors import UpstreamError
from .upstream import UpstreamRequest


class XCache(enum.StrEnum):
    """The ``X-Cache`` header of an answer (the README lists the values)."""

    HIT = "HIT"  # fresh from a tier
    STALE = "STALE"  # stale served: while a refresh runs, or on an upstream error
    MISS = "MISS"  # this request's flight called the upstream
    COALESCED = "COALESCED"  # it waited on a call another request made
    ERROR = "ERROR"  # no entry: an error answer (no ``X-Cache`` header is sent)


class Source(enum.StrEnum):
    """Where an entry came from: a tier (its ``name``), the upstream, or another
    process's call read back through Redis. ``Cache-Status``'s ``detail``."""

    MEMORY = "memory"
    REDIS = "redis"
    DB = "db"
    UPSTREAM = "upstream"
    PEER = "peer"


@dataclasses.dataclass(frozen=True, slots=True)
class Accept:
    """What a flight may answer from a tier instead of calling the upstream.

    A foreground load takes stale (and refreshes after), a background
    refresh only fresh (another process may have refreshed it), an explicit
    refresh nothing; a refresh ahead of time any fresh entry newer than the
    one it was started for (another process got there first).
    """

    states: frozenset[State]
    newer_than: float | None = None

    def takes(self, entry: Entry, state: State) -> bool:
        if state in self.states:
            return True
        return (
            self.newer_than is not None
            and state is State.FRESH
            and entry.fetched_at > self.newer_than
        )


ACCEPT_STALE = Accept(frozenset({State.FRESH, State.STALE}))
ACCEPT_FRESH = Accept(frozenset({State.FRESH}))
ACCEPT_NONE = Accept(frozenset())


@dataclasses.dataclass(frozen=True, slots=True)
class Lookup:
    """One request, reduced to what the cache needs: everything else is dropped."""

    endpoint: str
    key: str
    key_hash: str
    name: str
    policy: Policy
    #: Builds the upstream request: only a miss needs it, never the hit path.
    build_request: Callable[[], UpstreamRequest]
    content_type: str
    validate_body: Callable[[bytes], None]
    #: No shared cache may keep the answer (``Cache-Control: private``).
    private: bool = False
    #: What the entry keeps to be made again by a refresh (coalescing.params).
    params: str = ""
    #: Refresh a key that keeps being asked for shortly before it goes stale.
    refresh_ahead: bool = False
    #: The entry's labels for invalidation by tag.
    tags: tuple[str, ...] = ()
    #: The source when it is a function (``@coalesced``), not an HTTP upstream:
    #: returns the body and its content type, raises :class:`UpstreamError`.
    call: Callable[[], tuple[bytes, str]] | None = None

    @property
    def request(self) -> UpstreamRequest:
        return self.build_request()


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What one flight produced; shared by every waiter of the flight."""

    entry: Entry | None
    source: str  # a :class:`Source`
    error: UpstreamError | None = None
    #: The upstream answered 304: the entry is the one held before, renewed.
    renewed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What one caller gets; each caller builds its own response from it."""

    entry: Entry | None
    x_cache: XCache
    source: str
    error: UpstreamError | None = None
    policy: Policy | None = None
    renewed: bool = False


class CrossProcessFlight(Protocol):
    """One upstream call per key across processes (``coalescing.distributed``)."""

    def run(
        self,
        lk: Lookup,
        accept: Accept,
        lead: Callable[[], Outcome],
        fallback: Entry | None,
        fallback_source: str,
        now: Callable[[], float],
    ) -> Outcome:
        """``lead()`` here, or the outcome of the process that leads."""
        ...

    def evict_everywhere(self, key_hash: str, name: str) -> None: ...

    def purge_tag_everywhere(self, tag: str, soft: bool) -> None: ...
