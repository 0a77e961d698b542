from django.apps import AppConfig
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

        get_settings()  # a bad COALESCING setting fails at start-up, not on a request
