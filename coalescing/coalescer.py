"""The read path, in one place, and nothing else.

    memory -> (Redis) -> database -> join the call in flight
           -> serve stale and start one refresh -> lead the upstream call

The caller reads the memory tier itself (the hit path: one dict lookup, no
I/O). Everything below runs inside a single flight per key, so however many
requests miss at once, one greenlet per process reads the lower tiers and
calls the upstream. A value found lower down is written back up. A failing
tier is a miss, logged once per outage and counted, never a caller's error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import metrics, refresh_ahead
from .entry import Entry, Policy, State
from .errors import (
    UpstreamBadBody,
    UpstreamError,
    UpstreamHeldBack,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from .health import Health
from .protection import ConcurrencyLimit, FailureBackoff
from .reads import (
    ACCEPT_FRESH,
    ACCEPT_NONE,
    ACCEPT_STALE,
    Accept,
    Answer,
    CrossProcessFlight,
    Lookup,
    Outcome,
    Source,
    XCache,
)
from .singleflight import Flight, FlightTimeout, SingleFlight
from .tiers.base import Tier
from .upstream import UpstreamClient, UpstreamResponse, Validators

log = logging.getLogger("coalescing")

NOT_FOUND_BODY = b'{"detail":"Not found"}'
#: How much longer than the upstream budget a waiter waits before giving up.
WAIT_MARGIN_S = 1.0


class TierGuard:
    """Turns a tier's failure into a miss, by the policy of :class:`Health`."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        # One Health per tier: a tier that judges its backend itself (the
        # database's writer) shares its own with the guard.
        own = getattr(tier, "health", None)
        self.health = own if isinstance(own, Health) else Health(tier.name)

    def call(self, op: str, fn: Callable[[], Any]) -> Any:
        if op == "set" and self.tier.buffers_writes:
            # Only buffered, taken even while the tier is down: its writer keeps
            # it (bounded, see the tier) and reports its real writes. A buffered
            # write says nothing of the backend, so it is not counted either way.
            try:
                return fn()
            except Exception as exc:
                self.health.failed(op, exc)
                return None
        if not self.health.available(op):
            return None
        try:
            result = fn()
        except Exception as exc:
            self.health.failed(op, exc)
            return None
        self.health.succeeded(op)
        return result


class Coalescer:
    def __init__(
        self,
        memory: Tier,
        lower_tiers: Sequence[Tier],
        client: UpstreamClient,
        *,
        upstream_timeout: float,
        max_bytes: int,
        max_concurrency: int = 0,
        clock: Callable[[], float] = time.time,
        distributed: CrossProcessFlight | None = None,
        after_flight: Callable[[], None] = lambda: None,
    ) -> None:
        self.memory = memory
        #: Every tier, fastest first; the memory tier is read directly on the hit path.
        self.tiers = [TierGuard(memory)] + [TierGuard(t) for t in lower_tiers]
        self.client = client
        self.upstream_timeout = upstream_timeout
        self.max_bytes = max_bytes
        self.clock = clock
        self.flights: SingleFlight[Outcome] = SingleFlight()
        # Waiting for a slot comes out of the waiters' margin, not the upstream's budget.
        self.limit = ConcurrencyLimit(max_concurrency, wait_s=WAIT_MARGIN_S * 0.8)
        self.backoff = FailureBackoff(clock=lambda: self.clock())
        #: How long a flight that fetched takes to land here (refresh-ahead's timing).
        self.landing = refresh_ahead.LandingTimes()
        #: The cross-process flight (Redis), when there is one.
        self.distributed = distributed
        #: Run in each flight's thread as it ends (the runtime closes Django's
        #: per-thread database connections there).
        self.after_flight = after_flight

    def guard(self, tier_name: str) -> TierGuard | None:
        return next((g for g in self.tiers if g.tier.name == tier_name), None)

    # -- the caller's side ----------------------------------------------------

    def get(self, lk: Lookup) -> Answer:
        """The answer for ``lk``, waiting (bounded) on the call if one is needed."""
        answer = self._from_memory(lk)
        if answer is not None:
            return answer
        flight, started = self._join(lk)
        try:
            outcome = flight.result(self.upstream_timeout + WAIT_MARGIN_S)
        except FlightTimeout:
            return self._timed_out(lk)
        return self._from_outcome(lk, outcome, started)

    async def aget(self, lk: Lookup) -> Answer:
        """:meth:`get` for an event loop: a hit never leaves it, a waiter holds no thread.

        The flight runs in a thread of its own as for :meth:`get` (the same
        tiers, lease and upstream call); only the wait is different.
        """
        answer = self._from_memory(lk)
        if answer is not None:
            return answer
        flight, started = self._join(lk)
        try:
            outcome = await flight.aresult(self.upstream_timeout + WAIT_MARGIN_S)
        except FlightTimeout:
            return self._timed_out(lk)
        return self._from_outcome(lk, outcome, started)

    def _from_memory(self, lk: Lookup) -> Answer | None:
        """The hit path: the memory tier's answer, or ``None`` when a flight must run."""
        entry = self.memory.get(lk.key_hash)
        if entry is None:
            return None
        now = self.clock()
        state = lk.policy.state(entry, now)
        if state is State.FRESH:
            metrics.labelled(metrics.TIER_HITS, lk.endpoint, Source.MEMORY).inc()
            if lk.refresh_ahead and self._due_early(lk, entry, now):
                self.refresh(lk, Accept(frozenset(), newer_than=entry.fetched_at))
            return Answer(entry, XCache.HIT, Source.MEMORY, None, lk.policy)
        if state is State.STALE:
            metrics.labelled(metrics.TIER_HITS, lk.endpoint, Source.MEMORY).inc()
            self.refresh(lk)
            return self._answer(lk, entry, XCache.STALE, Source.MEMORY)
        if state is State.DEAD:
            self.memory.delete(lk.key_hash)
        return None

    def _join(self, lk: Lookup) -> tuple[Flight[Outcome], bool]:
        flight, started = self.flights.start(lk.key_hash, lambda: self._load(lk, ACCEPT_STALE))
        if not started:
            metrics.COALESCED.labels(lk.endpoint).inc()
        return flight, started

    def _timed_out(self, lk: Lookup) -> Answer:
        metrics.WAIT_TIMEOUTS.labels(lk.endpoint).inc()
        return self._give_up(lk)

    def refresh(self, lk: Lookup, accept: Accept = ACCEPT_FRESH) -> bool:
        """Start one background refresh of ``lk`` unless a call for it is in flight."""
        if self.flights.in_flight(lk.key_hash):
            return False
        _, started = self.flights.start(lk.key_hash, lambda: self._load(lk, accept))
        if started:
            metrics.REFRESHES.labels(lk.endpoint).inc()
        return started

    def _due_early(self, lk: Lookup, entry: Entry, now: float) -> bool:
        """Whether this hit refreshes the entry before it goes stale (see refresh_ahead)."""
        if entry.negative:
            return False
        fresh_s = lk.policy.fresh_ms / 1000.0
        left = entry.fetched_at + fresh_s - now
        if not refresh_ahead.near_end(left, fresh_s):  # most hits: no estimate looked up
            return False
        mean, lead = self.landing.estimate(lk.endpoint)
        return refresh_ahead.due(left, fresh_s, mean, lead)

    def refresh_now(self, lk: Lookup) -> Answer:
        """Fetch from the upstream now (joining a call in flight), and wait for it."""
        flight, started = self.flights.start(lk.key_hash, lambda: self._load(lk, ACCEPT_NONE))
        try:
            outcome = flight.result(self.upstream_timeout + WAIT_MARGIN_S)
        except FlightTimeout:
            return self._give_up(lk)
        if self.distributed is not None and outcome.error is None:
            # Other processes drop their copy and read the new one from Redis.
            self.distributed.evict_everywhere(lk.key_hash, lk.name)
        return self._from_outcome(lk, outcome, started)

    def peek(self, key_hash: str, name: str = "") -> Entry | None:
        """The entry of the fastest tier that holds it, whatever its state."""
        for guard in self.tiers:
            entry = guard.call("get", lambda t=guard.tier: t.get(key_hash, name))
            if entry is not None:
                return entry
        return None

    def invalidate(self, key_hash: str, name: str = "") -> None:
        """Remove an entry from every tier, and from every process's memory tier."""
        for guard in self.tiers:
            guard.call("delete", lambda t=guard.tier: t.delete(key_hash, name))
        if self.distributed is not None:
            self.distributed.evict_everywhere(key_hash, name)

    def invalidate_tag(self, tag: str, policy_of: Callable[[str], Policy], *, soft: bool) -> int:
        """Every entry labelled ``tag``, in every tier and process: marked stale
        (``soft``: served while one refresh each runs, no cold stampede) or
        removed. Returns how many keys it found.

        ``policy_of(endpoint)`` gives each entry's windows: marked stale is
        aged to the end of its fresh window, the body kept.
        """
        self.flush()  # a buffered write would bring back what is purged
        found: dict[str, tuple[str, str]] = {}  # key hash -> (name, endpoint)
        for guard in self.tiers:
            for key_hash, name, endpoint in (
                guard.call("get", lambda t=guard.tier: t.tagged(tag)) or ()
            ):
                found.setdefault(key_hash, (name, endpoint))
        self._apply_tag(self.tiers, found, policy_of, soft)
        if self.distributed is not None:
            self.distributed.purge_tag_everywhere(tag, soft)
        return len(found)

    def purge_tag_in_memory(
        self, tag: str, policy_of: Callable[[str], Policy], *, soft: bool
    ) -> None:
        """This process's share of another process's :meth:`invalidate_tag`."""
        found = {e.key_hash: (e.name, e.endpoint) for e in self.memory.with_tag(tag)}
        self._apply_tag(self.tiers[:1], found, policy_of, soft)

    def _apply_tag(
        self,
        guards: Sequence[TierGuard],
        found: dict[str, tuple[str, str]],
        policy_of: Callable[[str], Policy],
        soft: bool,
    ) -> None:
        now = self.clock()
        by_cutoff: dict[float, list[tuple[str, str]]] = {}
        for key_hash, (name, endpoint) in found.items():
            cutoff = policy_of(endpoint).stale_since(now) if soft else 0.0
            by_cutoff.setdefault(cutoff, []).append((key_hash, name))
        # Slowest tier first: a refresh started by a marked memory entry must
        # find the lower tiers marked too, or it would bring the old value back.
        for guard in reversed(guards):
            for cutoff, keys in by_cutoff.items():
                if soft:
                    guard.call("set", lambda t=guard.tier, k=keys, c=cutoff: t.age_to(k, c))
                else:
                    guard.call("delete", lambda t=guard.tier, k=keys: t.delete_many(k))

    def flush(self) -> list[str]:
        """Write out buffered tier writes (tests, invalidation); see :meth:`_write_out`."""
        return self._write_out("flush")

    def close(self) -> list[str]:
        """Write out buffered writes, then stop the tiers' threads (graceful stop,
        a coalescer replaced); see :meth:`_write_out`."""
        return self._write_out("close")

    def _write_out(self, op: str) -> list[str]:
        """Call each tier's ``flush`` or ``close``; what could not be written, one
        line per tier (empty when all was).

        A buffering tier is tried even while its breaker is open: this is the
        last chance for what it holds, and its write bound caps the wait.
        """
        unwritten: list[str] = []
        for guard in self.tiers:
            method = getattr(guard.tier, op)
            if not guard.tier.buffers_writes:
                guard.call(op, method)
                continue
            try:
                method()
            except Exception as exc:
                guard.health.failed(op, exc)
                unwritten.append(f"{guard.tier.name}: {exc}")
            else:
                guard.health.succeeded(op)
        return unwritten

    def _from_outcome(self, lk: Lookup, outcome: Outcome, started: bool) -> Answer:
        entry, source = outcome.entry, outcome.source
        if entry is None:
            return Answer(None, XCache.ERROR, source, outcome.error, lk.policy)
        if outcome.error is not None:
            metrics.STALE_SERVED.labels(lk.endpoint, "error").inc()
            return Answer(entry, XCache.STALE, source, outcome.error, lk.policy)
        if source == Source.UPSTREAM:
            x_cache = XCache.MISS if started else XCache.COALESCED
            return Answer(entry, x_cache, source, None, lk.policy, outcome.renewed)
        if source == Source.PEER:  # another process made the call: nobody here started it
            return self._answer(lk, entry, XCache.COALESCED, source)
        if lk.policy.state(entry, self.clock()) is State.STALE:
            self.refresh(lk)
            return self._answer(lk, entry, XCache.STALE, source)
        return self._answer(lk, entry, XCache.HIT, source)

    def _answer(self, lk: Lookup, entry: Entry, x_cache: XCache, source: str) -> Answer:
        if x_cache is XCache.STALE:
            metrics.STALE_SERVED.labels(lk.endpoint, "revalidate").inc()
        return Answer(entry, x_cache, source, None, lk.policy)

    def _give_up(self, lk: Lookup) -> Answer:
        """A waiter's bound ran out: stale if the memory tier has it, else a 504.

        The flight wrote the best value of the lower tiers into the memory tier
        before calling the upstream, so memory is the one place to look.
        """
        entry = self.memory.get(lk.key_hash)
        error = UpstreamTimeout("upstream call still running after the wait bound")
        if entry is not None and lk.policy.usable_on_error(entry, self.clock()):
            return Answer(entry, XCache.STALE, Source.MEMORY, error, lk.policy)
        return Answer(None, XCache.ERROR, Source.UPSTREAM, error, lk.policy)

    # -- inside the flight ---------------------------------------------------

    def _load(self, lk: Lookup, accept: Accept) -> Outcome:
        started = time.monotonic()
        try:
            outcome = self._load_inner(lk, accept)
            if outcome.error is None and outcome.source in (Source.UPSTREAM, Source.PEER):
                self.landing.observe(lk.endpoint, time.monotonic() - started)
            return outcome
        except Exception:
            # A bug must not become a 500 for every waiter: log it whole, and
            # answer as for a failed upstream call (stale if the caller has it).
            log.exception("coalescing: loading %s failed", lk.key)
            error = UpstreamError("the cache could not load this entry")
            return Outcome(None, Source.UPSTREAM, error)
        finally:
            self.after_flight()

    def _load_inner(self, lk: Lookup, accept: Accept) -> Outcome:
        now = self.clock()
        best: Entry | None = None
        best_source, best_index = "", 0
        # Look again in every tier, memory included: the value may have landed
        # since the caller looked (dogpile makes extra calls for want of this).
        for index, guard in enumerate(self.tiers):
            entry = guard.call("get", lambda t=guard.tier: t.get(lk.key_hash, lk.name))
            if entry is None:
                continue
            state = lk.policy.state(entry, now)
            if state is State.DEAD:
                continue
            if accept.takes(entry, state):
                metrics.TIER_HITS.labels(lk.endpoint, guard.tier.name).inc()
                self._write(lk, entry, self.tiers[:index])
                return Outcome(entry, guard.tier.name)
            if best is None or entry.fetched_at > best.fetched_at:
                best, best_source, best_index = entry, guard.tier.name, index
        if best is not None and best_index > 0:
            # Up into the faster tiers now, though not servable as is: a waiter
            # that gives up on this flight (see _give_up) finds it there.
            self._write(lk, best, self.tiers[:best_index])
        if self.distributed is None:
            return self._call_upstream(lk, best, best_source)
        outcome = self.distributed.run(
            lk,
            accept,
            lambda: self._call_upstream(lk, best, best_source),
            best,
            best_source,
            self.clock,
        )
        if outcome.source == Source.PEER and outcome.entry is not None:
            self.memory.set(outcome.entry, lk.policy.lifetime_ms(outcome.entry))
        return outcome

    def _call_upstream(self, lk: Lookup, fallback: Entry | None, fallback_source: str) -> Outcome:
        try:
            self.backoff.check(lk.key_hash)
            with self.limit.slot():
                entry, renewed = self._fetch(lk, fallback)
        except UpstreamError as error:
            _detach(error)
            self.backoff.failed(lk.key_hash, error)
            if isinstance(error, UpstreamHeldBack | UpstreamOverloaded):
                metrics.UPSTREAM_REFUSED.labels(lk.endpoint, type(error).__name__).inc()
            if fallback is not None and lk.policy.usable_on_error(fallback, self.clock()):
                return Outcome(fallback, fallback_source, error)
            return Outcome(None, Source.UPSTREAM, error)
        self.backoff.succeeded(lk.key_hash)
        self._write(lk, entry, self.tiers)
        return Outcome(entry, Source.UPSTREAM, renewed=renewed)

    def _fetch(self, lk: Lookup, previous: Entry | None = None) -> tuple[Entry, bool]:
        """A new entry from the lookup's source, and whether it is ``previous`` renewed.

        With ``previous`` holding the upstream's validators, the call is
        conditional: a 304 renews it (same body, a new fetch time) without
        the upstream sending the body again.
        """
        started = time.monotonic()
        validators = _validators(previous)
        try:
            if lk.call is not None:
                status, body, content_type = 200, *lk.call()
                if len(body) > self.max_bytes:
                    raise UpstreamBadBody(f"result is over the cap of {self.max_bytes} bytes", 200)
                response = None
            else:
                response = self.client.fetch(
                    lk.request, self.upstream_timeout, self.max_bytes, validators
                )
                status, body, content_type = self._checked(lk, response, previous)
        except UpstreamError as exc:
            self._record_call(lk, started, _error_label(exc))
            raise
        self._record_call(lk, started, str(response.status if response else status))
        renewed = response is not None and response.status == 304
        etag = response.etag if response else ""
        modified = response.last_modified if response else ""
        if renewed and previous is not None:  # a 304 may leave out what did not change
            etag, modified = etag or previous.upstream_etag, modified or previous.upstream_modified
        entry = Entry(
            key_hash=lk.key_hash,
            key=lk.key,
            endpoint=lk.endpoint,
            name=lk.name,
            status=status,
            body=body,
            content_type=content_type,
            fetched_at=round(self.clock(), 3),
            params=lk.params,
            upstream_etag=etag,
            upstream_modified=modified,
            tags=lk.tags,
        )
        return entry, renewed

    @staticmethod
    def _checked(
        lk: Lookup, response: UpstreamResponse, previous: Entry | None
    ) -> tuple[int, bytes, str]:
        """Status, body and content type of an upstream answer the endpoint accepts."""
        if response.status == 304 and previous is not None:
            return previous.status, previous.body, previous.content_type
        if response.status == 404:
            return 404, NOT_FOUND_BODY, lk.content_type
        try:
            lk.validate_body(response.body)
        except ValueError as exc:
            raise UpstreamBadBody(f"upstream body refused: {exc}", 200) from exc
        return response.status, response.body, lk.content_type

    def _record_call(self, lk: Lookup, started: float, status: str) -> None:
        elapsed = time.monotonic() - started
        metrics.UPSTREAM_CALLS.labels(lk.endpoint, status).inc()
        metrics.UPSTREAM_LATENCY.labels(lk.endpoint).observe(elapsed)
        log.info(
            "upstream call endpoint=%s key=%s status=%s ms=%.1f",
            lk.endpoint,
            lk.key_hash,
            status,
            elapsed * 1000.0,
        )

    @staticmethod
    def _write(lk: Lookup, entry: Entry, tiers: Sequence[TierGuard]) -> None:
        lifetime = lk.policy.lifetime_ms(entry)
        for guard in tiers:
            guard.call("set", lambda t=guard.tier: t.set(entry, lifetime))


def _detach(error: UpstreamError) -> None:
    """Drop the error's traceback and causes: from here on it is data.

    The Outcome that carries it is held by the flight, and a traceback's
    frames reach back through ``f_back`` to the flight's own frame: a cycle,
    which kept the body read so far (up to the size cap) until the cyclic
    garbage collector happened to run.
    """
    error.__traceback__ = None
    error.__cause__ = error.__context__ = None
    error.__suppress_context__ = True


def _validators(previous: Entry | None) -> Validators | None:
    """What makes a call conditional: the validators of a body held now, if any."""
    if previous is None or previous.status != 200:
        return None
    if not (previous.upstream_etag or previous.upstream_modified):
        return None
    return Validators(previous.upstream_etag, previous.upstream_modified)


def _error_label(exc: UpstreamError) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamBadBody):
        return "invalid"
    return str(exc.upstream_status or "error")
