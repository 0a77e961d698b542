"""How long the cache-entry changelist takes to load with a million rows (not a test).

    .venv/bin/python -m bench.admin_changelist [--rows 1000000] [--repeat 7] [--db all]

For each database (a scratch SQLite file; a scratch PostgreSQL database when
``DATABASE_URL_POSTGRES``, default ``postgres://postgres@127.0.0.1:5432/postgres``,
answers), in a process of its own: migrate, insert the rows with one SQL
statement, log a superuser in and time whole admin page loads through
Django's test client (request to rendered HTML, every query included).
Prints the median of ``--repeat`` loads after one warm-up, per page.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "DATABASE_URL_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres"
)
PAGES = {
    "changelist": "/admin/coalescing/cacheentry/",
    "page 50": "/admin/coalescing/cacheentry/?p=50",
    "state=stale": "/admin/coalescing/cacheentry/?state=stale",
    "state=negative": "/admin/coalescing/cacheentry/?state=negative",
    "endpoint=prices": "/admin/coalescing/cacheentry/?endpoint=prices",
    "search by name": "/admin/coalescing/cacheentry/?q=SKU123457",
    "summary": "/admin/coalescing/cacheentry/summary/",
}
#: Spread of the rows' ages: every state has plenty of rows.
AGE_SPREAD_MS = 400_000

# i -> one row: 1 in 4 a price (coalesced by region), 1 in 20 a negative entry.
SELECT_ROW = """
    {hash},
    CASE WHEN i % 4 = 0 THEN 'prices:eu::SKU' || i ELSE 'products:SKU' || i || '::*' END,
    CASE WHEN i % 4 = 0 THEN 'prices' ELSE 'products' END,
    CASE WHEN i % 4 = 0 THEN 'eu' ELSE 'SKU' || i END,
    CASE WHEN i % 20 = 0 THEN 404 ELSE 200 END,
    {body},
    'application/json',
    {now} - (i * 7919) % {spread},
    180,
    'http://upstream.example/products/SKU' || i
"""
COLUMNS = "key_hash, key, endpoint, name, status, body, content_type, fetched_at_ms, size, params"


def insert_rows(rows: int) -> None:
    from django.db import connection

    now = round(time.time() * 1000)
    body_text = '\'{"id":"SKU\' || i || \'","name":"' + "x" * 150 + '","price":3}\''
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            select = SELECT_ROW.format(
                hash="printf('%032x', i)",
                body=f"CAST({body_text} AS BLOB)",
                now=now,
                spread=AGE_SPREAD_MS,
            )
            cursor.execute(
                f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
                f"INSERT INTO coalescing_cacheentry ({COLUMNS}) SELECT {select} FROM n"
            )
        else:
            select = SELECT_ROW.format(
                hash="lpad(to_hex(i), 32, '0')",
                body=f"convert_to({body_text}, 'UTF8')",
                now=now,
                spread=AGE_SPREAD_MS,
            )
            cursor.execute(
                f"INSERT INTO coalescing_cacheentry ({COLUMNS}) "
                f"SELECT {select} FROM generate_series(1::bigint, {rows}) AS i"
            )
            cursor.execute("ANALYZE coalescing_cacheentry")  # what autovacuum would do


def run_one(database_url: str, rows: int, repeat: int) -> dict[str, float]:
    """In this process: set Django up on ``database_url``, fill it, time the pages."""
    os.environ.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="coalesce_project.settings",
        DEBUG="0",
        SECRET_KEY="bench-only",
        LOG_LEVEL="WARNING",
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    from coalescing.models import CacheEntry

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    insert_rows(rows)
    inserted_s = time.perf_counter() - started
    assert CacheEntry.objects.count() == rows
    client = Client(HTTP_HOST="localhost")
    client.force_login(User.objects.create_superuser("bench", "bench@example.com", "bench"))
    figures = {"insert_s": inserted_s}
    for label, url in PAGES.items():
        times = []
        for _ in range(repeat + 1):  # the first load warms caches up
            started = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, (url, response.status_code)
        figures[label] = statistics.median(times[1:])
    return figures


def postgres_scratch_url() -> tuple[str, str] | None:
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception:
        return None
    name = f"bench_admin_{uuid.uuid4().hex[:8]}"
    return f"{POSTGRES_URL.rsplit('/', 1)[0]}/{name}", name


def postgres_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--db", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a database URL: run it here
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.rows, args.repeat)))
        return

    targets: list[tuple[str, str, str | None]] = []
    scratch = tempfile.mkdtemp(prefix="bench-admin-")
    if args.db in ("sqlite", "all"):
        targets.append(("sqlite", f"sqlite:///{scratch}/bench.sqlite3", None))
    if args.db in ("postgres", "all"):
        pg = postgres_scratch_url()
        if pg is None:
            print(f"PostgreSQL does not answer at {POSTGRES_URL}: skipped")
        else:
            postgres_admin(f'CREATE DATABASE "{pg[1]}"')
            targets.append(("postgres", pg[0], pg[1]))

    print(f"{args.rows:,} rows, median of {args.repeat} loads (ms)")
    for label, url, pg_name in targets:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.admin_changelist", "--child", url]
                + ["--rows", str(args.rows), "--repeat", str(args.repeat)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=1800,
            )
        finally:
            if pg_name:
                postgres_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        if done.returncode != 0:
            print(f"{label}: failed\n{done.stderr}")
            continue
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{label}: inserted in {figures.pop('insert_s'):.1f} s")
        for page, seconds in figures.items():
            print(f"  {page:<18} {seconds * 1000:8.1f}")
    for path in Path(scratch).glob("*"):
        path.unlink()
    os.rmdir(scratch)


if __name__ == "__main__":
    main()
