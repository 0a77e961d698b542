"""The project's URLs plus ``/bare/products``: both views in one process, for ``bench.micro``."""

from django.urls import path

from bench.peers.bare import api as bare_api
from coalesce_project.urls import urlpatterns as project_urlpatterns

urlpatterns = [*project_urlpatterns, path("bare/", bare_api.urls)]
