"""Real servers as subprocesses: ``manage.py serve``, gunicorn with gevent workers, uvicorn."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from testkit.ports import free_port

__all__ = [
    "PYTHON",
    "ROOT",
    "SERVING_LINE",
    "Server",
    "free_port",
    "gunicorn",
    "manage",
    "parse_cache_status",
    "serve",
    "server_env",
    "uvicorn",
]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def server_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update({"DJANGO_SETTINGS_MODULE": "coalesce_project.settings", "LOG_LEVEL": "WARNING"})
    env.update(extra)
    return env


def manage(*args: str, env: Mapping[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env=server_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Server:
    """A server process, started with exactly ``env``; ``url`` is where it answers."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        port: int,
        cwd: Path = ROOT,
        ready_path: str = "/metrics",
    ) -> None:
        self.port = port
        self.ready_path = ready_path
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"coalescing-server-{port}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                requests.get(self.url + self.ready_path, timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait: the graceful stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def get(self, path: str, **kwargs: object) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.get(self.url + path, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, **kwargs: object) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.post(self.url + path, **kwargs)  # type: ignore[arg-type]


def serve(env: Mapping[str, str], port: int | None = None, *extra: str) -> Server:
    port = port or free_port()
    args = [PYTHON, "manage.py", "serve", "--port", str(port), *extra]
    return Server(args, server_env(env), port)


def gunicorn(env: Mapping[str, str], workers: int = 3, port: int | None = None) -> Server:
    port = port or free_port()
    args = [
        PYTHON,
        "-m",
        "gunicorn",
        "-k",
        "gevent",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "10",
        "coalesce_project.wsgi",
    ]
    return Server(args, server_env(env), port)


def uvicorn(env: Mapping[str, str], port: int | None = None, *extra: str) -> Server:
    """The example project under uvicorn (one process), as the README serves it."""
    port = port or free_port()
    args = [PYTHON, "-m", "uvicorn", "coalesce_project.asgi:application", "--port", str(port)]
    return Server([*args, "--log-level", "warning", *extra], server_env(env), port)


def parse_cache_status(value: str) -> dict[str, str | bool]:
    """``coalescing; hit; ttl=7`` -> ``{"hit": True, "ttl": "7"}``."""
    parts = [p.strip() for p in value.split(";")]
    assert parts[0] == "coalescing", value
    out: dict[str, str | bool] = {}
    for part in parts[1:]:
        name, _, val = part.partition("=")
        out[name] = val if _ else True
    return out


SERVING_LINE = re.compile(r"Serving on (http://\S+?)/ ")
