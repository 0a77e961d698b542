"""A project that is not ours: the app installed the way the README says."""

import os

SECRET_KEY = "minimal-project-test-key"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["coalescing", "tests.minimal_project"]
ROOT_URLCONF = "tests.minimal_project.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["MINIMAL_DB"]}}
USE_TZ = True
WEATHER_API = os.environ.get("WEATHER_API", "http://127.0.0.1:9")
COALESCING = {"FRESH_TTL_MS": 30_000, "STALE_TTL_MS": 60_000}
