"""Moved to :mod:`testkit.servers`; this shim goes once its last importer moves."""

from testkit.servers import *  # noqa: F403
