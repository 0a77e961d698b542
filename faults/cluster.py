"""The servers under test: ``manage.py serve`` and gunicorn gevent workers
sharing one Redis (behind the delay proxy) and one PostgreSQL, all ours."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testkit.servers import Server, gunicorn, manage, serve

from .services import (
    DelayProxy,
    OwnPostgres,
    OwnRedis,
    Unavailable,
    children,
    raise_fd_limit,
    rss_bytes,
)

#: The windows the suite runs with: short, so a scenario sees fresh, stale and
#: expired values within seconds. The wait bound of CONTRACT.md is
#: UPSTREAM_TIMEOUT_MS + 1 s.
SETTINGS = {
    "FRESH_TTL_MS": 1000,
    "STALE_TTL_MS": 3000,
    "STALE_IF_ERROR_MS": 300_000,
    "NEGATIVE_TTL_MS": 5000,
    "UPSTREAM_TIMEOUT_MS": 2000,
}
UPSTREAM_TIMEOUT_S = SETTINGS["UPSTREAM_TIMEOUT_MS"] / 1000.0
WAIT_BOUND_S = UPSTREAM_TIMEOUT_S + 1.0
FRESH_S = SETTINGS["FRESH_TTL_MS"] / 1000.0
STALE_S = SETTINGS["STALE_TTL_MS"] / 1000.0


@dataclass
class Cluster:
    upstream_url: str
    workers: int = 2
    #: Used only when a PostgreSQL cluster of our own cannot be had.
    shared_postgres_url: str = ""
    extra_env: Mapping[str, str] = field(default_factory=dict)

    redis: OwnRedis | None = None
    proxy: DelayProxy | None = None
    postgres: OwnPostgres | None = None
    postgres_note: str = ""
    database_url: str = ""
    single: Server | None = None
    multi: Server | None = None
    env: dict[str, str] = field(default_factory=dict)
    _shared_db: str = ""

    def start(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        # Servers inherit our limit on open files: 2,000 idle connections need more
        # than the usual soft limit of 1,024.
        raise_fd_limit(8192)
        self.redis = OwnRedis()
        self.redis.start()
        self.proxy = DelayProxy(self.redis.port)
        self._start_postgres()
        self.env = {
            "PRODUCT_API_BASE": self.upstream_url,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": f"redis://127.0.0.1:{self.proxy.port}/0",
            "REDIS_PREFIX": f"faults{uuid.uuid4().hex[:6]}",
            "LOG_LEVEL": "WARNING",
            **{k: str(v) for k, v in SETTINGS.items()},
            **self.extra_env,
        }
        migrated = manage("migrate", "--noinput", env=self.env)
        if migrated.returncode != 0:
            raise RuntimeError(f"migrate failed: {migrated.stderr[-2000:]}")
        self.single = serve(self.env)
        self.multi = gunicorn(self.env, workers=self.workers)
        self.wait_workers()

    def _start_postgres(self) -> None:
        try:
            self.postgres = OwnPostgres()
            self.postgres.start()
            self.database_url = self.postgres.url
            return
        except Unavailable as exc:
            self.postgres = None
            self.postgres_note = f"no PostgreSQL cluster of our own: {exc}"
        if not self.shared_postgres_url:
            raise Unavailable(self.postgres_note)
        import psycopg

        name = f"faults_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.shared_postgres_url, autocommit=True, connect_timeout=3) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        self._shared_db = name
        self.database_url = f"{self.shared_postgres_url.rsplit('/', 1)[0]}/{name}"

    def stop(self) -> None:
        for server in (self.single, self.multi):
            if server is not None:
                try:
                    server.stop(timeout=15)
                except Exception:
                    server.kill()
        if self.proxy is not None:
            self.proxy.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.cleanup()
        if self._shared_db:
            import psycopg

            with psycopg.connect(self.shared_postgres_url, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self._shared_db}" WITH (FORCE)')

    # -- what the scenarios use ----------------------------------------------

    @property
    def urls(self) -> list[str]:
        assert self.single is not None and self.multi is not None
        return [self.single.url, self.multi.url]

    def worker_pids(self) -> list[int]:
        assert self.multi is not None
        return children(self.multi.proc.pid)

    def server_pids(self) -> dict[str, int]:
        """Every process that serves requests: ``serve`` and each gunicorn worker."""
        assert self.single is not None
        pids = {"serve": self.single.proc.pid}
        for n, pid in enumerate(sorted(self.worker_pids()), 1):
            pids[f"worker{n}"] = pid
        return pids

    def rss(self) -> dict[str, int]:
        return {name: rss_bytes(pid) for name, pid in self.server_pids().items()}

    def wait_workers(self, timeout: float = 30.0) -> None:
        """Until gunicorn has all its workers, each answering."""
        import requests

        assert self.multi is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.worker_pids()) >= self.workers:
                try:
                    requests.get(self.multi.url + "/metrics", timeout=2)
                    return
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        raise RuntimeError("gunicorn did not get its workers back")

    def logs(self) -> str:
        return "".join(s.log() for s in (self.single, self.multi) if s is not None)

    def alive(self) -> bool:
        return all(s is not None and s.proc.poll() is None for s in (self.single, self.multi))


def describe_machine() -> str:
    import platform

    cpus = os.cpu_count() or 0
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line)
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, IndexError, ValueError):
        mem = "unknown RAM"
    return (
        f"{cpus} cores ({model}), {mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
