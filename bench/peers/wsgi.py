"""The peers under WSGI: Django's own application, not the coalescing front layer.

``manage.py serve`` takes it from ``WSGI_APPLICATION`` and gunicorn from its
command line: a peer is what a Django user has without this app, so it must
not pay for the front layer's look at every request either.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.peers.settings")

application = get_wsgi_application()
