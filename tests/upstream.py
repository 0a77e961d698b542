"""Moved to :mod:`testkit.upstream`; this shim goes once its last importer moves."""

from testkit.upstream import *  # noqa: F403
