"""ASGI entry point: ``uvicorn coalesce_project.asgi:application``."""

import os

from coalescing.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coalesce_project.settings")

application = get_asgi_application()
