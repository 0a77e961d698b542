from ninja import NinjaAPI

from .endpoints import WeatherEndpoint

api = NinjaAPI(urls_namespace="minimal")
WeatherEndpoint.register(api)

urlpatterns = api.urls[0]
