"""The benchmark suite: ``make bench`` runs :mod:`bench.run`."""
