"""The peers of the benchmarks: what a Django user would otherwise do.

Each is a URL module selected by ``BENCH_PEER`` in :mod:`bench.peers.settings`,
which starts from the project's own settings (same middleware, same
``DEBUG``; the ``bare`` peers have none), and is served like our server:
``manage.py serve`` (one gevent process) or ``gunicorn -k gevent``, with
Django's own WSGI application (:mod:`.wsgi`); ``bare_asgi`` under uvicorn with
Django's own ASGI application (:mod:`.asgi`). ``nginx.conf`` is the odd one
out: nginx's own proxy cache in front of the same upstream.
"""
