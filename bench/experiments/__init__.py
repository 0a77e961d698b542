"""Experiments behind the profiles of docs/benchmarks.md: not part of ``make bench``.

Nothing here changes the project: a settings module of this package may patch
a class of ``coalescing`` in its own process only, to measure what a proposed
change would buy before anyone makes it.
"""
