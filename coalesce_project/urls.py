from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from coalescing.views import metrics_view
from products.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("demo/", include("products.demo_upstream")),
    path("", api.urls),
]
# The admin's CSS and JS under `manage.py serve` in development (DEBUG only);
# a deployment serves STATIC_ROOT (`collectstatic`) from its web server.
urlpatterns += staticfiles_urlpatterns()
