"""The upstream's validators (``ETag``, ``Last-Modified``) kept with an entry, so
that a refresh asks "has it changed?" and a 304 renews the entry without a body."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("coalescing", "0003_params_instead_of_upstream_url")]

    operations = [
        migrations.AddField(
            "cacheentry",
            "upstream_etag",
            models.CharField(blank=True, default="", max_length=256),
        ),
        migrations.AddField(
            "cacheentry",
            "upstream_modified",
            models.CharField(blank=True, default="", max_length=256),
        ),
    ]
