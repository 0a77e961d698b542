from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from products.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("coalescing.urls")),
]
if not settings.PRODUCT_API_BASE:
    # The built-in demo upstream, only when it is the one in use.
    urlpatterns.append(path("demo/", include("products.demo_upstream")))
urlpatterns.append(path("", api.urls))
# The admin's CSS and JS under `manage.py serve` in development (DEBUG only);
# a deployment serves STATIC_ROOT (`collectstatic`) from its web server.
urlpatterns += staticfiles_urlpatterns()
