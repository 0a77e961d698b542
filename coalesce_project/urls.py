from django.contrib import admin
from django.urls import include, path

from coalescing.views import metrics_view
from products.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("demo/", include("products.demo_upstream")),
    path("", api.urls),
]
