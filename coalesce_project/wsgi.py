"""WSGI entry point: ``gunicorn -k gevent -w N coalesce_project.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coalesce_project.settings")

application = get_wsgi_application()
