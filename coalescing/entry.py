"""What every tier stores: an upstream answer as immutable bytes plus metadata."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import re
import typing
from collections.abc import Iterable

#: A fixed cost per entry on top of its bytes and strings: the Entry object,
#: the headers of its bytes and str objects (the ETag's included), the LRU's
#: node. Measured with tracemalloc (about 480 bytes on CPython 3.11), so that
#: the memory budget bounds what the process really holds, for tiny entries too.
ENTRY_OVERHEAD_BYTES = 510
#: A cache key longer than this is a bug in the endpoint, not user input.
MAX_KEY_LENGTH = 8192


def body_etag(status: int, body: bytes) -> str:
    """A strong ``ETag`` of a stored answer: a digest of its status and bytes.

    Derived from what every tier stores, so every process and tier gives the
    same tag for the same answer, and a restart keeps it. The status is in
    the digest so that a 200 whose bytes happen to equal a cached 404's body
    never validates the 404 a client kept.
    """
    digest = hashlib.blake2b(body, digest_size=16, person=b"coalescing-%d" % status)
    return f'"{digest.hexdigest()}"'


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    key_hash: str  # the identity used by every tier
    key: str  # readable form, "<endpoint>:<cache key>", for the admin and logs
    endpoint: str
    name: str  # single-flight name
    status: int  # 200, or 404 for a negative entry
    body: bytes  # served byte for byte; shared between callers, never mutated
    content_type: str
    fetched_at: float  # epoch seconds when the upstream answered
    #: The endpoint's parameters it was made from (JSON, see coalescing.params):
    #: how a refresh builds its upstream request again. Never the request itself.
    params: str = ""
    #: The upstream's validators of this body, sent back on a refresh
    #: (``If-None-Match``, ``If-Modified-Since``): a 304 renews the entry.
    upstream_etag: str = ""
    upstream_modified: str = ""
    #: Labels for invalidation by tag (``CoalescedEndpoint.tags``).
    tags: tuple[str, ...] = ()
    #: The HTTP validator of the answer (:func:`body_etag`). Computed once per
    #: object, when it is fetched or decoded by a tier, never per hit: the
    #: memory tier keeps the object. Not stored by any tier (it is derived).
    etag: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "etag", body_etag(self.status, self.body))

    @property
    def size(self) -> int:
        texts = (self.key, self.key_hash, self.name, self.params, self.upstream_etag)
        text = sum(map(len, texts)) + len(self.upstream_modified) + sum(map(len, self.tags))
        return len(self.body) + text + len(self.etag) + ENTRY_OVERHEAD_BYTES

    @property
    def negative(self) -> bool:
        return self.status == 404


class State(enum.Enum):
    FRESH = "fresh"
    STALE = "stale"
    EXPIRED = "expired"  # not servable as is, but still a fallback on upstream error
    DEAD = "dead"  # useless: no window left in which it could be served


class Window(typing.NamedTuple):
    """One row of the state table: entries of a status class whose age is in
    ``[from_ms, until_ms)`` are in ``state``."""

    state: State
    negative: bool  # the 404 class, or every other status
    from_ms: float
    until_ms: float


#: The state rules: per status class (a 404 or not), the states in order of
#: age, each with the :class:`Policy` window that ends it; past the last, an
#: entry is dead. A 404 has no stale window and is never served as
#: stale-if-error.
STATE_TABLE: tuple[tuple[bool, tuple[tuple[State, str], ...]], ...] = (
    (
        False,
        (
            (State.FRESH, "fresh_ms"),
            (State.STALE, "stale_ms"),
            (State.EXPIRED, "stale_if_error_ms"),
        ),
    ),
    (True, ((State.FRESH, "negative_ms"),)),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """The windows of one endpoint, in milliseconds.

    :attr:`windows` is the one description of the states: :meth:`state`
    (every hit) and the SQL conditions of the admin and ``purge_stale``
    (:mod:`coalescing.models`) are both read from it.
    """

    fresh_ms: int
    stale_ms: int
    stale_if_error_ms: int
    negative_ms: int
    #: Per status class, in order of age: the windows that tile the age axis.
    windows: tuple[Window, ...] = dataclasses.field(init=False, repr=False, compare=False)
    #: :attr:`windows` as ``(until_ms, state)`` pairs by class, for :meth:`state`.
    _ladders: tuple[tuple[tuple[float, State], ...], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Each window starts where the one before ends, so one shorter than
        # the one before it is empty: as in ``if age < fresh ... elif age <
        # stale ...``, the first upper bound an age is below wins.
        windows: list[Window] = []
        for negative, bounds in STATE_TABLE:
            start = -math.inf
            for state, field in bounds:
                until = max(start, getattr(self, field))
                windows.append(Window(state, negative, start, until))
                start = until
            windows.append(Window(State.DEAD, negative, start, math.inf))
        object.__setattr__(self, "windows", tuple(windows))
        ladders = tuple(
            tuple((w.until_ms, w.state) for w in windows if w.negative is negative)
            for negative in (False, True)
        )
        object.__setattr__(self, "_ladders", ladders)

    def state(self, entry: Entry, now: float) -> State:
        age_ms = (now - entry.fetched_at) * 1000.0
        for until_ms, state in self._ladders[entry.negative]:
            if age_ms < until_ms:
                return state
        return State.DEAD  # not reached: the last window has no upper bound

    def usable_on_error(self, entry: Entry, now: float) -> bool:
        return not entry.negative and (now - entry.fetched_at) * 1000.0 < self.stale_if_error_ms

    def lifetime_ms(self, entry: Entry) -> int:
        """How long after its fetch an entry may still be served in some way."""
        if entry.negative:
            return self.negative_ms
        return max(self.stale_ms, self.stale_if_error_ms)

    def stale_since(self, now: float) -> float:
        """The fetch time of an entry that has just gone stale at ``now`` (soft purge)."""
        return round(now - self.fresh_ms / 1000.0 - 0.001, 3)

    def ttl_seconds(self, entry: Entry, now: float) -> int:
        """RFC 9211 ``ttl``: remaining freshness, negative once stale."""
        limit = self.negative_ms if entry.negative else self.fresh_ms
        return math.floor(entry.fetched_at + limit / 1000.0 - now)


def make_key(endpoint: str, cache_key: str) -> tuple[str, str]:
    """The readable key and its hash, the one identity of an entry in every tier."""
    readable = f"{endpoint}:{cache_key}"
    if len(readable) > MAX_KEY_LENGTH:
        raise ValueError(f"cache key of {endpoint!r} is longer than {MAX_KEY_LENGTH} characters")
    return readable, hashlib.blake2b(readable.encode(), digest_size=16).hexdigest()


#: What a tag may be: it is stored space-separated and in Redis key names.
TAG_PATTERN = re.compile(r"[A-Za-z0-9_.:@/-]{1,128}")


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """The tags, sorted and unique; ``ValueError`` for one that is not a tag."""
    out = tuple(sorted(set(tags)))
    for tag in out:
        if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
            raise ValueError(f"a tag is 1 to 128 of A-Z a-z 0-9 _ . : @ / -, got {tag!r}")
    return out
