from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules


class CoalescingConfig(AppConfig):
    name = "coalescing"
    verbose_name = "Coalescing cache"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Endpoint classes register themselves when defined: import every
        # installed app's ``endpoints`` module so commands and the admin know them.
        autodiscover_modules("endpoints")
        from .conf import get_settings

        # A bad COALESCING setting fails at start-up, not on a request.
        _check_redis_cache(get_settings().redis_cache)


def _check_redis_cache(alias: str) -> None:
    if not alias:
        return
    from django.conf import settings

    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
        raise ImproperlyConfigured(
            f"COALESCING['REDIS_CACHE'] is {alias!r}, which is not an alias of CACHES "
            f"(known: {', '.join(sorted(caches)) or 'none'})"
        )
    backend = caches[alias].get("BACKEND", "")
    if not backend.startswith("django_redis."):
        raise ImproperlyConfigured(
            f"COALESCING['REDIS_CACHE'] names CACHES[{alias!r}], whose BACKEND is {backend!r}: "
            "it must be django-redis's (django_redis.cache.RedisCache)"
        )
