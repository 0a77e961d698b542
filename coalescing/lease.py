"""Cross-process coordination on Redis: leases per key, and wake-ups.

No Django imports. Two parts:

- :class:`Leases`: ``SET NX PX`` with a random token, renewed while its
  holder works, released by compare-and-delete (Lua), so a lease is never
  freed by anyone but its holder, and lapses quickly when its holder dies.
- :class:`Notifier`: one pub/sub listener thread (greenlet under gevent) per
  process. A leader publishes ``done``/``fail`` when its call ends; the
  processes waiting on that key are woken at once instead of polling, and
  ``evict`` messages drop an entry from every process's memory tier.
  Messages can be lost (a reconnect): waiters also poll, on a bounded interval.

Tokens are plain values passed around, never thread-local: under gevent that
would be greenlet-local, and renewals run in another greenlet.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import redis

from .threads import DaemonThread

log = logging.getLogger("coalescing")

# KEYS[1] lease key; ARGV[1] token. Delete only if we still hold it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] lease key; ARGV[1] token, ARGV[2] ttl ms. Extend only if we still hold it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Leases:
    def __init__(self, client: redis.Redis, ttl_ms: int = 2000) -> None:
        self.client = client
        self.ttl_ms = ttl_ms
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    def acquire(self, key: str) -> str | None:
        """A token if the lease was free and is now ours, else ``None``."""
        token = secrets.token_hex(16)
        if self.client.set(key, token, nx=True, px=self.ttl_ms):
            return token
        return None

    def held(self, key: str) -> bool:
        return bool(self.client.exists(key))

    def release(self, key: str, token: str) -> bool:
        return bool(self._release(keys=[key], args=[token]))

    def renew(self, key: str, token: str) -> bool:
        return bool(self._renew(keys=[key], args=[token, self.ttl_ms]))

    @contextmanager
    def renewed(self, key: str, token: str):
        """Keep the lease alive while the block runs (its holder is alive)."""
        stop = threading.Event()

        def renew_loop() -> None:
            while not stop.wait(self.ttl_ms / 3000.0):
                try:
                    if not self.renew(key, token):
                        return  # lost it (lapsed): the next holder has it now
                except redis.RedisError:
                    return

        renewer = threading.Thread(target=renew_loop, name="lease-renew", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()


class Waiter:
    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message: list[str] | None = None


class Notifier:
    """Publishes and receives ``done``, ``fail``, ``evict`` and ``tag`` messages."""

    def __init__(
        self,
        client: redis.Redis,
        listen_client: redis.Redis,
        channel: str,
        on_evict: Callable[[str, str], None],
        on_tag: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.client = client
        self.listen_client = listen_client
        self.channel = channel
        self.on_evict = on_evict
        self.on_tag = on_tag
        self.sender = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()  # guards _waiters
        self._waiters: dict[str, set[Waiter]] = {}
        self._thread = DaemonThread(self._listen, "coalescing-pubsub", on_fork=self._forked)
        self.listening = threading.Event()

    def start(self) -> None:
        """Start the listener (again after a fork: threads do not survive one)."""
        self._thread.start()

    def _forked(self) -> None:
        # A child is another sender: with the parent's name, each would ignore the other.
        self.sender = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._waiters = {}
        self.listening = threading.Event()

    @contextmanager
    def waiting(self, key_hash: str):
        waiter = Waiter()
        with self._lock:
            self._waiters.setdefault(key_hash, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(key_hash)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[key_hash]

    def publish(self, kind: str, key_hash: str, *rest: Any) -> None:
        message = " ".join([kind, key_hash, self.sender, *map(str, rest)])
        self.client.publish(self.channel, message)

    def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = None
            try:
                pubsub = self.listen_client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self.listening.set()
                backoff = 0.1
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except Exception as exc:  # Redis down: retry with backoff, never die
                if self.listening.is_set():
                    log.warning("coalescing: Redis pub/sub lost (%s), reconnecting", exc)
                self.listening.clear()
                threading.Event().wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

    def _dispatch(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        parts = text.split(" ", 6)  # the last part, a fail's text, may hold spaces
        if len(parts) < 3:
            return
        kind, key_hash, sender = parts[0], parts[1], parts[2]
        if kind == "evict":
            if sender != self.sender:
                self.on_evict(key_hash, parts[3] if len(parts) > 3 else "")
            return
        if kind == "tag":  # ``tag <tag> <sender> soft|hard``
            if sender != self.sender and self.on_tag is not None:
                self.on_tag(key_hash, len(parts) > 3 and parts[3] == "soft")
            return
        with self._lock:
            waiters = list(self._waiters.get(key_hash, ()))
        for waiter in waiters:
            waiter.message = parts
            waiter.event.set()
