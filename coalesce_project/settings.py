"""Settings of the example project, read from the environment (CONTRACT.md).

Every bad value stops start-up with a message that names its variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from coalescing.conf import from_environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = os.environ


def env_bool(name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env.get("SECRET_KEY", "").strip()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105
ALLOWED_HOSTS = [
    h.strip() for h in env.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()
]

PRODUCT_API_BASE = env.get("PRODUCT_API_BASE", "").strip()
if PRODUCT_API_BASE:
    _parts = urlsplit(PRODUCT_API_BASE)
    if _parts.scheme not in ("http", "https") or not _parts.hostname:
        raise ImproperlyConfigured(
            f"PRODUCT_API_BASE must be an http(s) URL such as https://api.example.com, "
            f"got {PRODUCT_API_BASE!r}"
        )

#: The bearer token of the partner stock API (products/partner.py); the demo
#: upstream checks it. A secret: sent to the upstream and kept nowhere else.
PRODUCT_API_TOKEN = env.get("PRODUCT_API_TOKEN", "demo-token")

COALESCING = from_environ(env)

try:
    _default_db = dj_database_url.parse(
        env.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0
    )
except Exception as exc:  # dj-database-url raises several types
    raise ImproperlyConfigured(f"DATABASE_URL is not a usable database URL: {exc}") from exc
if _default_db.get("ENGINE") == "django.db.backends.sqlite3":
    # WAL lets readers run beside the writer; the busy timeout makes a writer
    # wait its turn instead of failing with "database is locked".
    _default_db.setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
        }
    )
elif _default_db.get("ENGINE") == "django.db.backends.postgresql":
    # A database that does not answer must not hold a thread forever: the
    # persistent tier is a cache, a miss is better (psycopg's minimum is 2 s).
    _default_db.setdefault("OPTIONS", {}).setdefault("connect_timeout", 2)
DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "coalescing",
    "products",
]

MIDDLEWARE = [
    # First: a JSON 400 for a query Django cannot read or a bad Host, before
    # anything else reads the request (coalescing/middleware.py says why).
    "coalescing.middleware.RequestErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "coalesce_project.urls"
WSGI_APPLICATION = "coalesce_project.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
USE_TZ = True
TIME_ZONE = "UTC"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "coalescing": {"handlers": ["console"], "level": env.get("LOG_LEVEL", "INFO").upper()},
    },
}
