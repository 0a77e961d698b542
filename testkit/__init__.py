"""What the tests, the fault scenarios and the benchmarks share to drive real
processes: a counting fake upstream (:mod:`testkit.upstream`), a server starter
(:mod:`testkit.servers`) and :func:`testkit.ports.free_port`.

Not shipped (``pyproject.toml`` packages ``coalescing*`` only). ``faults`` and
``bench`` import this kit, never ``tests``.
"""
