"""The shared tier: entries in Redis as a hash of bytes and metadata.

Keys look like ``<prefix>:{<name>}:e:<key hash>``: the ``{name}`` hash tag
keeps every key of one single-flight name (its entries and leases) on one
Redis Cluster shard. A name that is not safe inside a tag is hashed.
Writes are monotonic (a Lua compare on the fetch time) and expire with the
end of the last window in which the entry could be served.
"""

from __future__ import annotations

import hashlib
import json
import re
import time

import redis

from ..entry import Entry
from ..health import Health
from ..reads import Source
from .base import Tier, TierError

_SAFE_TAG = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# KEYS[1] entry key; ARGV: fetched_at ms, meta json, body, ttl ms.
_MONOTONIC_SET = """
local current = redis.call('HGET', KEYS[1], 'f')
if current and tonumber(current) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'f', ARGV[1], 'm', ARGV[2], 'b', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS[1] a tag's set; ARGV: member, ttl ms. The set lives as long as its
# longest-lived entry (an older entry written later must not shorten it).
_TAG = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

# KEYS[1] entry key; ARGV[1] fetched_at ms: make the entry no younger than that.
_AGE_TO = """
local current = redis.call('HGET', KEYS[1], 'f')
if not current or tonumber(current) <= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'f', ARGV[1])
return 1
"""


def tag(name: str) -> str:
    if not _SAFE_TAG.fullmatch(name):
        name = "h" + hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
    return "{" + name + "}"


class RedisTier(Tier):
    name = Source.REDIS

    def __init__(self, client: redis.Redis, prefix: str = "coalescing") -> None:
        self.client = client
        self.prefix = prefix
        #: Shared by the tier's guard and the cross-process flight: one outage, one breaker.
        self.health = Health(self.name)
        self._set = client.register_script(_MONOTONIC_SET)
        self._age_to = client.register_script(_AGE_TO)
        self._tag = client.register_script(_TAG)

    def entry_key(self, key_hash: str, name: str) -> str:
        return f"{self.prefix}:{tag(name)}:e:{key_hash}"

    def tag_key(self, label: str) -> str:
        """The set of the entries labelled ``label``: ``[key hash, name, endpoint]`` members."""
        return f"{self.prefix}:tag:{label}"

    def lease_key(self, key_hash: str, name: str) -> str:
        return f"{self.prefix}:{tag(name)}:lease:{key_hash}"

    def get(self, key_hash: str, name: str = "") -> Entry | None:
        try:
            fetched_ms, meta, body = self.client.hmget(
                self.entry_key(key_hash, name), ["f", "m", "b"]
            )
        except redis.RedisError as exc:
            raise TierError(f"redis read failed: {exc}") from exc
        if fetched_ms is None or meta is None or body is None:
            return None
        m = json.loads(meta)
        return Entry(
            key_hash=key_hash,
            key=m["key"],
            endpoint=m["endpoint"],
            name=m["name"],
            status=m["status"],
            tags=tuple(m.get("tags", ())),
            body=body,
            content_type=m["content_type"],
            fetched_at=int(fetched_ms) / 1000.0,
            params=m.get("params", ""),
            upstream_etag=m.get("etag", ""),
            upstream_modified=m.get("modified", ""),
        )

    def set(self, entry: Entry, lifetime_ms: int) -> None:
        fetched_ms = round(entry.fetched_at * 1000)
        ttl_ms = int(lifetime_ms - (time.time() * 1000 - fetched_ms))
        if ttl_ms <= 0:
            return
        meta = json.dumps(
            {
                "key": entry.key,
                "endpoint": entry.endpoint,
                "name": entry.name,
                "status": entry.status,
                "content_type": entry.content_type,
                "params": entry.params,
                "etag": entry.upstream_etag,
                "modified": entry.upstream_modified,
                "tags": entry.tags,
            }
        )
        try:
            self._set(
                keys=[self.entry_key(entry.key_hash, entry.name)],
                args=[fetched_ms, meta, entry.body, ttl_ms],
            )
            member = json.dumps([entry.key_hash, entry.name, entry.endpoint])
            for label in entry.tags:
                # Members whose entry has expired are skipped when the tag is purged.
                self._tag(keys=[self.tag_key(label)], args=[member, ttl_ms])
        except redis.RedisError as exc:
            raise TierError(f"redis write failed: {exc}") from exc

    def tagged(self, label: str) -> list[tuple[str, str, str]]:
        """``(key hash, name, endpoint)`` of the entries labelled ``label``."""
        try:
            members = self.client.smembers(self.tag_key(label))
        except redis.RedisError as exc:
            raise TierError(f"redis read failed: {exc}") from exc
        return [tuple(json.loads(member)) for member in members]

    def age_to(self, keys: list[tuple[str, str]], fetched_at: float) -> int:
        ms = round(fetched_at * 1000)
        try:
            return sum(
                self._age_to(keys=[self.entry_key(key_hash, name)], args=[ms])
                for key_hash, name in keys
            )
        except redis.RedisError as exc:
            raise TierError(f"redis write failed: {exc}") from exc

    def delete_many(self, keys: list[tuple[str, str]]) -> int:
        try:
            for start in range(0, len(keys), 500):
                batch = keys[start : start + 500]
                self.client.delete(*(self.entry_key(k, n) for k, n in batch))
        except redis.RedisError as exc:
            raise TierError(f"redis delete failed: {exc}") from exc
        return len(keys)

    def delete(self, key_hash: str, name: str = "") -> None:
        try:
            self.client.delete(self.entry_key(key_hash, name))
        except redis.RedisError as exc:
            raise TierError(f"redis delete failed: {exc}") from exc
