"""``manage.py serve``: one gevent process, stopped gracefully on SIGTERM or Ctrl-C.

gevent must patch sockets, threads and time before Django or any driver is
imported, and by the time a command runs Django is. So, unpatched, the
command starts its own command line again in a fresh interpreter that
patches first (:data:`PATCH_FIRST`): any project's ``manage.py`` (or
``django-admin``) serves with no line added to it.
"""

from __future__ import annotations

import os
import signal
import sys

from django.core.management.base import BaseCommand, CommandError, CommandParser

#: Marks the interpreter that :data:`PATCH_FIRST` started, so it never loops.
REEXEC_FLAG = "COALESCING_SERVE_PATCHED"
#: Patch, then run the original command line as ``python <script> ...`` (or
#: ``python -m django ...``) would: the script's folder first on ``sys.path``.
PATCH_FIRST = """\
from gevent import monkey; monkey.patch_all()
import os, runpy, sys
sys.argv = sys.argv[1:]
script = os.path.abspath(sys.argv[0])
if os.path.basename(script) == "__main__.py":
    sys.path[0] = os.getcwd()
    runpy.run_module(os.path.basename(os.path.dirname(script)), run_name="__main__", alter_sys=True)
else:
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")
"""


def _reexec_patched() -> None:
    """Replace this process with one that patches gevent first, same arguments."""
    script = sys.argv[0]
    if not os.path.isfile(script):
        raise CommandError(f"serve cannot restart {script!r} under gevent: not a script file")
    os.environ[REEXEC_FLAG] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-c", PATCH_FIRST, *sys.argv])


class Command(BaseCommand):
    help = "Serve the site with gevent's WSGI server (one process)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8787)
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=10.0,
            help="seconds to let requests in hand finish on SIGTERM",
        )
        parser.add_argument(
            "--idle-timeout",
            type=float,
            default=None,
            help="seconds before an idle keep-alive connection is closed (default 60)",
        )
        parser.add_argument(
            "--header-timeout",
            type=float,
            default=None,
            help="seconds for a request's line and headers to arrive "
            "(default: SERVE_HEADER_TIMEOUT_MS)",
        )
        parser.add_argument(
            "--max-connections",
            type=int,
            default=None,
            help="open connections at most (default: SERVE_MAX_CONNECTIONS)",
        )
        parser.add_argument("--access-log", action="store_true", help="log every request")

    def handle(
        self,
        *args,
        host: str,
        port: int,
        stop_timeout: float,
        idle_timeout: float | None,
        header_timeout: float | None,
        max_connections: int | None,
        access_log: bool,
        **kw,
    ):
        import gevent
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            if os.environ.get(REEXEC_FLAG):
                raise CommandError("serve could not patch with gevent before Django started")
            _reexec_patched()
        os.environ.pop(REEXEC_FLAG, None)  # not inherited by anything this process starts
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535, got {port}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise CommandError(f"--idle-timeout must be above 0 seconds, got {idle_timeout}")
        header_timeout, max_connections = _bounds(header_timeout, max_connections)
        # The project's own WSGI_APPLICATION, as runserver does (its wsgi.py
        # decides whether coalescing.wsgi answers the endpoints in front).
        from django.core.servers.basehttp import get_internal_wsgi_application

        from coalescing import server
        from coalescing.runtime import get_coalescer

        application = server.with_content_length(get_internal_wsgi_application())
        warning = server.fit_fd_limit(max_connections)
        if warning:
            self.stderr.write(f"Warning: {warning}")
        try:
            httpd = server.StrictWSGIServer(
                (host, port),
                application,
                log="default" if access_log else None,
                max_connections=max_connections,
            )
            if idle_timeout is not None:
                httpd.idle_timeout = idle_timeout
            httpd.header_timeout = header_timeout
            # serve_forever() stops again once stopped, with this timeout.
            httpd.stop_timeout = stop_timeout
            httpd.init_socket()
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc}") from exc
        server.bound_address = httpd.address[:2]

        def stop(*_: object) -> None:
            self.stdout.write("Stopping: finishing requests in hand...")
            gevent.spawn(httpd.stop, timeout=stop_timeout)

        gevent.signal_handler(signal.SIGTERM, stop)
        gevent.signal_handler(signal.SIGINT, stop)
        self.stdout.write(f"Serving on http://{host}:{httpd.address[1]}/ (gevent; Ctrl-C stops)")
        self.stdout.flush()
        httpd.serve_forever()
        unwritten = get_coalescer().close()
        if unwritten:
            self.stderr.write("Stopped; cache writes lost: " + "; ".join(unwritten))
        else:
            self.stdout.write("Stopped; pending cache writes written.")


def _bounds(header_timeout: float | None, max_connections: int | None) -> tuple[float, int]:
    """The head deadline (seconds) and the connection cap: the flags, else the settings."""
    from coalescing.conf import get_settings

    conf = get_settings()
    if header_timeout is None:
        header_timeout = conf.serve_header_timeout_ms / 1000.0
    elif not header_timeout > 0:
        raise CommandError(f"--header-timeout must be above 0 seconds, got {header_timeout}")
    if max_connections is None:
        max_connections = conf.serve_max_connections
    elif max_connections < 1:
        raise CommandError(f"--max-connections must be at least 1, got {max_connections}")
    return header_timeout, max_connections
