"""Test settings: the project's, with a per-run SQLite file and a PostgreSQL
alias, so that the persistent tier is tested on both.

Importing them connects to nothing. Whether the ``postgres`` alias's server
(``DATABASE_URL_POSTGRES``) answers is asked once, when the first test needs
a database (``django_db_setup`` in tests/conftest.py); if it does not, the
alias stands for a throwaway SQLite database and the tests that use
PostgreSQL skip, or fail under ``REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import tempfile

import dj_database_url

from coalesce_project.settings import *  # noqa: F403
from coalesce_project.settings import DATABASES
from testkit.services import POSTGRES_URL

RUN_ID = os.getpid()

DATABASES["default"]["TEST"] = {
    "NAME": os.path.join(tempfile.gettempdir(), f"coalescing-test-{RUN_ID}.sqlite3")
}
DATABASES["postgres"] = dj_database_url.parse(POSTGRES_URL, conn_max_age=0)
DATABASES["postgres"]["TEST"] = {"NAME": f"test_coalescing_{RUN_ID}"}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False}
