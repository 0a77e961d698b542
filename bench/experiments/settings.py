"""Our server with the experimental patches named in ``BENCH_PATCHES`` applied.

``BENCH_PATCHES=eager,backoff`` (see :mod:`bench.experiments.patches`).
Used by ``python -m bench.profile ... --settings bench.experiments.settings``
to measure a proposed change of ``coalescing`` before anyone makes it.
"""

from coalesce_project.settings import *  # noqa: F403

MIDDLEWARE = ["bench.experiments.patches.ApplyPatches", *MIDDLEWARE]  # noqa: F405
