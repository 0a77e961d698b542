"""The README's "Add it to your project", followed to the letter by a new user.

The wheel is built from this checkout and installed into fresh virtual
environments with exactly the extras the README names for each command; a
project is made with ``django-admin startproject``; the files are the
README's own code blocks. Then ``serve``, gunicorn and uvicorn each answer,
and 50 concurrent identical cold requests make one upstream call.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import django
import pytest

from testkit.servers import ROOT, Server, free_port

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
SECTION = re.compile(r"^## Add it to your project\n(.*?)^## ", re.S | re.M)
BLOCK = re.compile(r"^```python\n# (file|add to): (\S+)\n(.*?)^```", re.S | re.M)


def readme_files() -> list[tuple[str, str, str]]:
    """``(how, path, code)`` of every code block of the section that names a file."""
    section = SECTION.search(README.read_text())
    assert section, "README has no section 'Add it to your project'"
    blocks = BLOCK.findall(section.group(1))
    assert {path for _, path, _ in blocks} >= {
        "mysite/settings.py",
        "weather/endpoints.py",
        "mysite/urls.py",
        "mysite/wsgi.py",
        "mysite/asgi.py",
    }
    return blocks


def run(*args: str | Path, cwd: Path | None = None, env: dict | None = None, timeout=600) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT)
    (built,) = out.glob("django_coalescing-*.whl")
    return built


def test_the_wheel_carries_the_app_alone(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"coalescing"}
    assert "coalescing/migrations/0001_initial.py" in names
    assert any(n.startswith("coalescing/templates/admin/coalescing/") for n in names)


class Site:
    """A project of the README's, in a venv of its own."""

    def __init__(self, root: Path, wheel: Path) -> None:
        self.root = root
        self.wheel = wheel
        self.venv = root / "venv"
        self.python = self.venv / "bin" / "python"
        self.project = root / "mysite"
        run(sys.executable, "-m", "venv", self.venv)
        self.install()

    def install(self, extras: str = "") -> None:
        """The wheel with ``extras``, on the Django of the suite (5.2 or 6.x)."""
        target = f"{self.wheel}[{extras}]" if extras else str(self.wheel)
        run(self.python, "-m", "pip", "install", "-q", target, f"Django=={django.__version__}")

    def create(self) -> None:
        run(self.venv / "bin" / "django-admin", "startproject", "mysite", cwd=self.root)
        run(self.python, "manage.py", "startapp", "weather", cwd=self.project)
        for how, path, code in readme_files():
            target = self.project / path
            if how == "file":
                target.write_text(code)
            else:
                target.write_text(target.read_text() + "\n" + code)
        run(self.python, "manage.py", "migrate", "-v0", cwd=self.project, env=self.env())

    def env(self, **extra: str) -> dict[str, str]:
        path = f"{self.venv / 'bin'}:/usr/bin:/bin"
        return {"PATH": path, "HOME": str(self.root), "LANG": "C.UTF-8", **extra}

    def server(self, args: list[str | Path], port: int, **env: str) -> Server:
        return Server([str(a) for a in args], self.env(**env), port, cwd=self.project)


def stampede(srv: Server, path: str, n: int = 50) -> list:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: srv.get(path), range(n)))


def assert_coalesced(srv: Server, upstream, city: str) -> None:
    upstream.delay = 0.5
    before = upstream.count
    answers = stampede(srv, f"/weather?city={city}")
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert upstream.count - before == 1
    assert {a.headers["X-Cache"] for a in answers} <= {"MISS", "COALESCED"}
    assert srv.get(f"/weather?city={city}").headers["X-Cache"] == "HIT"
    assert srv.get("/weather?city=Paris").status_code == 400
    assert "coalescing_requests_total" in srv.get("/metrics").text


def city() -> str:
    return "".join(c for c in uuid.uuid4().hex if c.isalpha())[:8] or "city"


@pytest.fixture(scope="module")
def plain_site(wheel, tmp_path_factory) -> Site:
    site = Site(tmp_path_factory.mktemp("plain"), wheel)
    site.create()
    return site


def test_serve_from_the_projects_own_manage_py(plain_site, upstream):
    port = free_port()
    args = [plain_site.python, "manage.py", "serve", "--port", port]
    srv = plain_site.server(args, port, WEATHER_API=upstream.url)
    try:
        assert_coalesced(srv, upstream, city())
    finally:
        assert srv.stop() == 0, srv.log()


def test_gunicorn_with_its_extra_and_redis_across_workers(plain_site, upstream, redis_url):
    plain_site.install("gunicorn")
    port = free_port()
    args = [
        plain_site.venv / "bin" / "gunicorn",
        "-k",
        "gevent",
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "mysite.wsgi",
    ]
    srv = plain_site.server(args, port, WEATHER_API=upstream.url, REDIS_URL=redis_url)
    try:
        assert_coalesced(srv, upstream, city())
    finally:
        srv.stop()


def test_uvicorn_with_its_extra(wheel, tmp_path_factory, upstream):
    site = Site(tmp_path_factory.mktemp("asgi"), wheel)
    site.install("asgi")
    site.create()
    port = free_port()
    args = [site.venv / "bin" / "uvicorn", "mysite.asgi:application", "--port", port]
    srv = site.server(args, port, WEATHER_API=upstream.url)
    try:
        assert_coalesced(srv, upstream, city())
    finally:
        srv.stop()
