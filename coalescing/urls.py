"""The app's own URLs: ``path("", include("coalescing.urls"))`` serves ``/metrics``."""

from django.urls import path

from .views import metrics_view

__all__ = ["urlpatterns"]

urlpatterns = [
    path("metrics", metrics_view, name="coalescing-metrics"),
]
