"""Errors an endpoint raises to answer a client (as opposed to upstream errors)."""

from __future__ import annotations


class BadRequest(Exception):
    """Invalid parameters: answered 400 with ``{"detail": message}``."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
