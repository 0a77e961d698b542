"""``manage.py serve`` under hostile clients (issue 12, findings 4, 5, 6, 9).

Real ``serve`` processes and raw sockets: ambiguous framing gets one 400 and
a closed connection with nothing processed (a request smuggled in a body is
never answered), HEAD answers carry no body on the wire, HTTP/1.1 needs Host,
a request head must arrive within its deadline, the connection cap holds
without hurting the connections in hand, and a query Django cannot read is a
JSON 400 on every URL with DEBUG on or off.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from coalescing.server import with_content_length
from faults.scenarios_http import CORPUS, HOST, SMUGGLED, outer
from faults.scenarios_http import exchange as send_and_read
from testkit.ports import free_port
from testkit.servers import Server, manage, serve

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('strict') / 'db.sqlite3'}"
    migrated = manage("migrate", "--noinput", env={"DATABASE_URL": url})
    assert migrated.returncode == 0, migrated.stderr
    return url


@pytest.fixture(scope="module")
def strict(_upstream_server, database) -> Iterator[Server]:
    """One serve in front of the counting upstream, with a 1 s head deadline."""
    env = {"PRODUCT_API_BASE": _upstream_server.url, "DATABASE_URL": database}
    srv = serve(env, None, "--header-timeout", "1")
    yield srv
    srv.stop()


def connect(srv: Server, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(srv: Server, data: bytes) -> tuple[bytes, bool]:
    """Send ``data``, read until the server closes: (all it sent, whether it closed)."""
    return send_and_read(srv.url, data)


@pytest.mark.parametrize("name", list(CORPUS))
def test_ambiguous_framing_is_refused_once_and_closed(strict, upstream, name):
    request, status = CORPUS[name]
    received, closed = exchange(strict, request)
    assert received.startswith(f"HTTP/1.1 {status} ".encode()), received[:200]
    assert received.count(b"HTTP/1.1 ") == 1, received  # the smuggled request is never answered
    assert closed
    time.sleep(0.05)
    assert upstream.count == 0, upstream.calls


def test_the_same_request_well_framed_is_answered_and_its_body_read_as_declared(strict, upstream):
    """The control: what the corpus refuses reaches the upstream when well-framed,
    and a body of declared length is read as a body, never as a request."""
    received, closed = exchange(
        strict,
        outer(HOST, f"Content-Length: {len(SMUGGLED)}".encode(), b"Connection: close") + SMUGGLED,
    )
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.count(b"HTTP/1.1 ") == 1 and closed
    assert [c["path"] for c in upstream.calls] == ["/products/OUTER"]
    chunked, _ = exchange(
        strict,
        outer(HOST, b"Transfer-Encoding: chunked", b"Connection: close", body=b"0\r\n\r\n"),
    )
    assert chunked.startswith(b"HTTP/1.1 200 ")


def read_head(sock: socket.socket, buffer: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """(status line, headers, the bytes after the head) of the next response."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"closed inside a head: {buffer!r}"
        buffer += chunk
    head, rest = buffer.split(b"\r\n\r\n", 1)
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.encode(), headers, rest


def read_body(sock: socket.socket, buffer: bytes, length: int) -> tuple[bytes, bytes]:
    while len(buffer) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside a body"
        buffer += chunk
    return buffer[:length], buffer[length:]


@pytest.mark.parametrize(
    ("path", "same_length"),
    [
        ("/products?productId=HEAD1", True),
        ("/docs", True),
        ("/metrics", False),  # counts this very request
        ("/nowhere", False),  # DEBUG's 404 page names the method
        ("/admin/login/", False),  # a new CSRF token each time
    ],
)
def test_head_has_no_body_on_the_wire_and_the_next_answer_parses(
    strict, upstream, path, same_length
):
    host = f"Host: 127.0.0.1:{strict.port}\r\n"
    with connect(strict) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\n{host}\r\n".encode())
        status, get_headers, rest = read_head(sock, b"")
        get_body, rest = read_body(sock, rest, int(get_headers["content-length"]))
        sock.sendall(
            f"HEAD {path} HTTP/1.1\r\n{host}\r\nGET {path} HTTP/1.1\r\n{host}\r\n".encode()
        )
        head_status, head_headers, rest = read_head(sock, rest)
        assert head_status == status
        assert int(head_headers["content-length"]) > 0
        if same_length:
            assert head_headers["content-length"] == get_headers["content-length"]
        assert "transfer-encoding" not in head_headers
        # What follows the HEAD answer's head is the next answer, not a body.
        again, again_headers, rest = read_head(sock, rest)
        assert again == status, rest[:200]
        body, rest = read_body(sock, rest, int(again_headers["content-length"]))
        assert len(body) == len(get_body) and rest == b""


def test_http11_without_host_is_refused_and_http10_without_host_is_answered(strict):
    refused, closed = exchange(strict, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 400 ") and closed
    answered, closed = exchange(strict, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert answered.startswith(b"HTTP/1.1 200 ") and b"coalescing_" in answered and closed


def _close_delay(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock``, and what it sent before."""
    started, received = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return time.monotonic() - started, received


def test_a_slow_header_sender_is_cut_off_at_the_deadline(strict):
    with connect(strict) as sock:
        started = time.monotonic()
        sock.settimeout(0.1)  # also the pace: a byte each 0.1 s, every read is quick
        received, closed_after = b"", None
        for byte in b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40:
            try:
                sock.sendall(bytes([byte]))
                received = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                pass  # reset: closed
            closed_after = time.monotonic() - started
            break
    assert closed_after is not None, "still open after 6 s of a trickling head"
    assert 0.9 <= closed_after <= 2.0, closed_after
    assert received in (
        b"",
        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    ), received


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(strict):
    with connect(strict) as sock:
        took, received = _close_delay(sock)
    assert 0.8 <= took <= 2.5, took
    assert received == b""  # nothing was asked: closed quietly


def test_an_idle_keep_alive_connection_outlives_the_head_deadline(strict):
    request = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{strict.port}\r\n\r\n".encode()
    with connect(strict) as sock:
        sock.sendall(request)
        _, headers, rest = read_head(sock, b"")
        read_body(sock, rest, int(headers["content-length"]))
        time.sleep(1.6)  # past the 1 s head deadline, well within the 60 s idle timeout
        sock.sendall(request)
        status, _, _ = read_head(sock, b"")
        assert status.startswith(b"HTTP/1.1 200 ")


@pytest.fixture(scope="module")
def capped(database) -> Iterator[Server]:
    srv = serve({"DATABASE_URL": database}, None, "--max-connections", "5")
    yield srv
    srv.stop()


def _get_in_thread(srv: Server, results: list) -> threading.Thread:
    def run() -> None:
        try:
            results.append(requests.get(srv.url + "/metrics", timeout=15).status_code)
        except requests.RequestException as exc:
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_past_the_cap_a_connection_waits_and_those_in_hand_are_not_harmed(capped):
    held = [connect(capped) for _ in range(5)]
    try:
        time.sleep(0.3)  # all five accepted: the pool is full
        results: list = []
        waiting = _get_in_thread(capped, results)
        time.sleep(1.0)
        assert results == [], "answered while five connections held every slot"
        held.pop(0).close()
        waiting.join(5)
        assert results == [200]
        for sock in held:  # the four others, still in hand, are served as usual
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _, _ = read_head(sock, b"")
            assert status.startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()


def test_at_the_cap_the_longest_idle_keep_alive_connection_makes_room(capped):
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    idle = []
    try:
        for _ in range(5):
            sock = connect(capped)
            sock.sendall(request)
            _, headers, rest = read_head(sock, b"")
            read_body(sock, rest, int(headers["content-length"]))
            idle.append(sock)
            time.sleep(0.05)
        started = time.monotonic()
        answer = requests.get(capped.url + "/metrics", timeout=5)
        assert answer.status_code == 200
        assert time.monotonic() - started < 2.0  # not the 60 s idle timeout
        oldest_took, received = _close_delay(idle[0])
        assert received == b"" and oldest_took < 1.0  # it was closed, not left open
        for sock in idle[2:]:
            sock.sendall(request)
            status, _, _ = read_head(sock, b"")
            assert status.startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in idle:
            sock.close()


def test_the_cap_and_the_deadline_are_settings_named_when_wrong(database):
    port = str(free_port())
    for name, value in [("SERVE_MAX_CONNECTIONS", "0"), ("SERVE_HEADER_TIMEOUT_MS", "soon")]:
        env = {"DATABASE_URL": database, name: value}
        done = manage("serve", "--port", port, env=env, timeout=60)
        assert done.returncode != 0
        assert name in done.stderr, done.stderr[-500:]
    env = {"DATABASE_URL": database}
    done = manage("serve", "--port", port, "--max-connections", "0", env=env, timeout=60)
    assert done.returncode != 0 and "--max-connections must be at least 1" in done.stderr


# -- finding 6 and 9: Django-level client errors ------------------------------------

#: 1,001 parameters in a request line pywsgi and gunicorn accept (4 KiB).
MANY = "&".join(["p=1"] * 1001)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module", params=["1", "0"], ids=["debug", "no-debug"])
def demo(request, database) -> Iterator[Server]:
    """serve with the demo upstream (no PRODUCT_API_BASE), DEBUG on and off."""
    env = {"DATABASE_URL": database, "DEBUG": request.param, "SECRET_KEY": "s" * 50}
    srv = serve(env)
    srv.debug = request.param == "1"  # type: ignore[attr-defined]
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    "path",
    [
        "/products?productId=SKU1&",
        "/demo/products/X?",
        "/nowhere?",
        "/admin/login/?",
        "/demo/stock?",
    ],
)
def test_a_thousand_parameters_are_a_json_400_on_every_url(demo, path):
    if path.startswith("/products"):
        assert demo.get("/products?productId=SKU1").status_code == 200  # the front has learned it
    answer = demo.get(path + MANY)
    assert answer.status_code == 400, answer.text[:300]
    assert answer.headers["Content-Type"] == "application/json"
    assert "1000" in answer.json()["detail"]
    assert "Traceback" not in demo.log()


def test_a_form_post_of_a_thousand_fields_read_by_the_csrf_check_is_a_json_400(demo):
    # The admin's login view is not CSRF-exempt: Django's check reads the form.
    answer = demo.post("/admin/login/", data=MANY, headers=FORM)
    assert answer.status_code == 400, answer.text[:300]
    assert answer.headers["Content-Type"] == "application/json"
    assert "1000" in answer.json()["detail"]
    assert "Traceback" not in demo.log()
    # A form within the limits still reaches the CSRF check: a 403, not our 400.
    assert demo.post("/admin/login/", data="a=1", headers=FORM).status_code == 403


def test_a_disallowed_host_is_a_json_400_logged_in_one_line(demo):
    answer = demo.get("/products?productId=SKU1", headers={"Host": "evil.example"})
    assert answer.status_code == 400
    assert answer.json() == {"detail": "invalid Host header"}
    log = demo.log()
    assert "Traceback" not in log
    # Django's console handler shows django.security under DEBUG only: one line.
    assert log.count("Invalid HTTP_HOST header: 'evil.example'") == (1 if demo.debug else 0)


def _app(status: str, body: bytes):
    def app(environ, start_response):
        start_response(status, [("Content-Type", "text/plain")])
        return [body]

    return app


@pytest.mark.parametrize("status", ["304 Not Modified", "204 No Content", "103 Early Hints"])
def test_no_content_length_is_added_to_answers_without_a_body(status):
    seen: list = []
    with_content_length(_app(status, b""))({}, lambda s, h, e=None: seen.append(h))
    assert not any(name.lower() == "content-length" for name, _ in seen[0])


def test_content_length_is_added_to_answers_with_a_body():
    seen: list = []
    body = with_content_length(_app("200 OK", b"hello"))({}, lambda s, h, e=None: seen.append(h))
    assert ("Content-Length", "5") in seen[0] and b"".join(body) == b"hello"
