"""``/metrics``: Prometheus text format, summed over workers in multiprocess mode."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import registry_in_force


def metrics_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(registry_in_force()), content_type=CONTENT_TYPE_LATEST)
