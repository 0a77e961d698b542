"""The process-wide objects: one coalescer with its tiers and upstream client.

Built on first use from the settings in force, and built again when the
``COALESCING`` setting changes (tests). Forked workers build their own,
since nothing is built at import time.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from .coalescer import Coalescer
from .conf import get_settings
from .tiers.memory import MemoryTier
from .upstream import UpstreamClient

_lock = threading.Lock()
_coalescer: Coalescer | None = None


def get_coalescer() -> Coalescer:
    global _coalescer
    coalescer = _coalescer
    if coalescer is None:
        with _lock:
            if _coalescer is None:
                _coalescer = _build()
            coalescer = _coalescer
    return coalescer


def _build() -> Coalescer:
    from .tiers.database import DatabaseTier  # imports models: only once apps are ready

    conf = get_settings()
    lower = [DatabaseTier(using=conf.database_alias)]
    return Coalescer(
        MemoryTier(conf.memory_cache_max_bytes),
        lower,
        UpstreamClient(),
        upstream_timeout=conf.upstream_timeout,
        max_bytes=conf.upstream_max_bytes,
    )


def reset() -> None:
    """Drop the coalescer (after writing out its buffers); the next use builds anew."""
    global _coalescer
    with _lock:
        old, _coalescer = _coalescer, None
    if old is not None:
        old.flush()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("COALESCING", "DATABASES"):
        reset()
