"""Backends of the fault suite's own, that it may stop, slow down and freeze.

Nothing here touches a service it did not start: the machine's PostgreSQL
cluster and Redis are shared with other people's tests.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testkit.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class OwnRedis:
    """A redis-server of our own on a free port, stopped with SIGKILL (a crash)."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            raise Unavailable("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--maxclients", "4000"]
            + ["--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=30)


class DelayProxy:
    """``faults.delayproxy`` in a process of its own, in front of a port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.control_port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faults.delayproxy"]
            + [str(self.port), str(target_port), str(self.control_port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the delay proxy did not start")
        self.delay = 0.0

    def set_delay(self, seconds: float) -> None:
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=5) as s:
            s.sendall(f"delay {seconds}\n".encode())
            assert s.makefile().readline().strip() == "ok"
        self.delay = seconds

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Unavailable(Exception):
    """A backend of our own cannot be had here; the reason says why."""


class OwnPostgres:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) in a temp dir, on a free port.

    It runs as the ``postgres`` user (PostgreSQL refuses root). Stopped with
    ``pg_ctl -m fast`` (clients are disconnected), frozen with SIGSTOP.
    """

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise Unavailable("no initdb under /usr/lib/postgresql/*/bin")
        self.bindir = Path(bins[-1]).parent
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise Unavailable("running as root and there is no postgres user") from exc
            runuser = shutil.which("runuser")
            if runuser is None:
                raise Unavailable("running as root and runuser is missing")
            self.run_as = [runuser, "-u", "postgres", "--"]
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        if self.run_as:
            shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        done = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust")
        if done.returncode != 0:
            self.cleanup()
            raise Unavailable(f"initdb failed: {done.stderr.strip()[-300:]}")

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.run_as, str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.dir,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.dir / "log")
        done = self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def pids(self) -> list[int]:
        """The postmaster and every backend of this cluster."""
        try:
            master = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [master, *children(master)]

    def freeze(self) -> list[int]:
        frozen = self.pids()
        for pid in frozen:
            _signal(pid, signal.SIGSTOP)
        return frozen

    def thaw(self, frozen: list[int]) -> None:
        for pid in frozen:
            _signal(pid, signal.SIGCONT)

    def cleanup(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.thaw(self.pids())
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- /proc -------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            found.extend(int(p) for p in Path(task).read_text().split())
        except OSError:
            pass
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def pid_of_local_port(port: int, candidates: list[int]) -> int | None:
    """Which of ``candidates`` owns the TCP socket whose local port is ``port``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in candidates:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files towards ``wanted``; the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
