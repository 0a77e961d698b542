"""One upstream call per key across every process that shares a Redis.

Inside a process the single flight already lets one greenlet per key through;
that greenlet comes here. It takes the key's lease and leads, or follows the
process that holds it: woken by pub/sub when the leader is done, polling on
a short bounded interval in case a message is lost, and taking the lease over
when it lapses with no value (its holder died). Redis failing means leading
locally: each process coalesces on its own and keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from . import metrics
from .entry import Entry
from .errors import UpstreamError, UpstreamOverloaded, UpstreamTimeout
from .health import Health
from .lease import Leases, Notifier
from .reads import Accept, Lookup, Outcome, Source
from .tiers.base import TierError
from .tiers.redis import RedisTier

#: Fallback poll while waiting on another process (pub/sub normally wakes us).
POLL_S = 0.25


class DistributedFlight:
    def __init__(
        self,
        tier: RedisTier,
        leases: Leases,
        notifier: Notifier,
        health: Health,
        wait_s: float,
    ) -> None:
        self.tier = tier
        self.leases = leases
        self.notifier = notifier
        self.health = health
        self.wait_s = wait_s

    def run(
        self,
        lk: Lookup,
        accept: Accept,
        lead: Callable[[], Outcome],
        fallback: Entry | None,
        fallback_source: str,
        now: Callable[[], float],
    ) -> Outcome:
        if not self.health.available():
            return lead()
        try:
            self.notifier.start()
            return self._run(lk, accept, lead, fallback, fallback_source, now)
        except (redis.RedisError, TierError) as exc:
            # Redis failed at some step: lead here, as a process on its own would.
            self.health.failed("lease", exc)
            return lead()

    def _run(self, lk, accept, lead, fallback, fallback_source, now) -> Outcome:
        lease_key = self.tier.lease_key(lk.key_hash, lk.name)
        started = now()
        deadline = time.monotonic() + self.wait_s

        def landed() -> Entry | None:
            """A value that answers us: acceptable, or fetched since we began."""
            entry = self.tier.get(lk.key_hash, lk.name)
            if entry is None:
                return None
            if accept.takes(entry, lk.policy.state(entry, now())) or entry.fetched_at >= started:
                return entry
            return None

        took_over = False
        with self.notifier.waiting(lk.key_hash) as waiter:
            while True:
                token = self.leases.acquire(lease_key)
                self.health.succeeded()
                if token is not None:
                    if took_over:
                        metrics.LEASE_TAKEOVERS.labels(lk.endpoint).inc()
                    return self._lead(lk, lead, lease_key, token, landed)
                # Another process leads: wait for its word, or for its lease to lapse.
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        error = UpstreamTimeout("another process's upstream call did not end")
                        return _fallback(lk, fallback, fallback_source, error, now())
                    waiter.event.wait(min(POLL_S, remaining))
                    message, waiter.message = waiter.message, None
                    waiter.event.clear()
                    if message is not None and message[0] == "fail":
                        return _fallback(lk, fallback, fallback_source, _error(message), now())
                    entry = landed()
                    if entry is not None:
                        return Outcome(entry, Source.PEER)
                    if not self.leases.held(lease_key):
                        took_over = True
                        break

    def _lead(self, lk, lead, lease_key, token, landed) -> Outcome:
        with self.leases.renewed(lease_key, token):
            # Look again now that the lease is ours: the last holder may have
            # stored the value between our first look and our taking the lease.
            try:
                entry = landed()
            except Exception:
                entry = None
            outcome = Outcome(entry, Source.REDIS) if entry is not None else lead()
        try:
            if outcome.error is not None:
                error = outcome.error
                self.notifier.publish(
                    "fail",
                    lk.key_hash,
                    error.http_status,
                    error.fwd_status,
                    error.retry_after or 0,
                    str(error)[:200],
                )
            else:
                self.notifier.publish("done", lk.key_hash)
            self.leases.release(lease_key, token)
        except redis.RedisError as exc:
            self.health.failed("lease", exc)
        return outcome

    def purge_tag_everywhere(self, tag: str, soft: bool) -> None:
        """Tell every other process to mark (``soft``) or drop its entries of ``tag``."""
        if not self.health.available():
            return
        try:
            self.notifier.publish("tag", tag, "soft" if soft else "hard")
        except redis.RedisError as exc:
            self.health.failed("publish", exc)

    def evict_everywhere(self, key_hash: str, name: str) -> None:
        """Tell every other process to drop ``key_hash`` from its memory tier."""
        if not self.health.available():
            return
        try:
            self.notifier.publish("evict", key_hash, name)
        except redis.RedisError as exc:
            self.health.failed("publish", exc)


#: The error classes a ``fail`` message is rebuilt as, by the status it gave.
_ERRORS_BY_STATUS: dict[int, type[UpstreamError]] = {
    504: UpstreamTimeout,
    503: UpstreamOverloaded,
}


def _error(message: list[str]) -> UpstreamError:
    """The leader's error, as its ``fail`` message reported it.

    ``fail <key> <sender> <http status> <fwd status> <retry-after s> <text>``:
    the waiters here answer as the leader's own waiters did, status and
    ``Retry-After`` included.
    """
    try:
        http_status, fwd_status, retry_after = int(message[3]), int(message[4]), int(message[5])
    except (IndexError, ValueError):
        http_status, fwd_status, retry_after = 502, 502, 0
    if http_status not in (502, 503, 504):
        http_status = 502
    text = message[6] if len(message) > 6 else "upstream call failed in another process"
    error = _ERRORS_BY_STATUS.get(http_status, UpstreamError)(
        text, fwd_status if fwd_status != http_status else None
    )
    error.http_status = http_status
    error.retry_after = retry_after or None
    return error


def _fallback(
    lk: Lookup, fallback: Entry | None, source: str, error: UpstreamError, now: float
) -> Outcome:
    if fallback is not None and lk.policy.usable_on_error(fallback, now):
        return Outcome(fallback, source, error)
    return Outcome(None, Source.UPSTREAM, error)
