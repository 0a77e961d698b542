import re

from django.conf import settings

from coalescing import CoalescedEndpoint, UpstreamRequest
from coalescing.params import single

CITY = re.compile(r"[a-z]{1,40}")


class WeatherEndpoint(CoalescedEndpoint[str]):
    name = "weather"
    path = "/weather"

    def parse(self, query):
        return single(query, "city", CITY, required=True)

    def coalescing_name(self, city):
        return city

    def cache_key(self, city):
        return city

    def upstream_request(self, city):
        return UpstreamRequest(f"{settings.WEATHER_API}/weather/{city}")
