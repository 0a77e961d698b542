"""The peers under ASGI: ``uvicorn bench.peers.asgi:application`` (``BENCH_PEER=bare_asgi``).

Django's own ASGI handler, not the coalescing front layer: a peer is what a
Django user has without this app.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.settings")

application = get_asgi_application()
