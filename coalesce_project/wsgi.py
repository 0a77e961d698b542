"""WSGI entry point: ``gunicorn -k gevent -w N coalesce_project.wsgi`` (and ``manage.py serve``)."""

import os

from coalescing.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coalesce_project.settings")

application = get_wsgi_application()
