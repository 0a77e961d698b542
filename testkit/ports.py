"""Local TCP ports for the processes a test, a scenario or a benchmark starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it; a race with other binds is possible)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
