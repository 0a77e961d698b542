"""The cache tiers, fastest first: memory, Redis, database."""

from .base import Tier, TierError

__all__ = ["Tier", "TierError"]
