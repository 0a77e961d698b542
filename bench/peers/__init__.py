"""The peers of the benchmarks: what a Django user would otherwise do.

Each is a URL module selected by ``BENCH_PEER`` in :mod:`bench.peers.settings`,
which starts from the project's own settings (same middleware, same
``DEBUG``), and is served exactly like our server: ``manage.py serve`` (one
gevent process) or ``gunicorn -k gevent``. ``nginx.conf`` is the odd one out:
nginx's own proxy cache in front of the same upstream.
"""
