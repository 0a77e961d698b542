"""gunicorn settings read from the working directory: the app's hooks (multiprocess metrics)."""

from coalescing.gunicorn import child_exit  # noqa: F401
