"""An entry's tags, for invalidation by tag (soft: marked stale; hard: deleted)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("coalescing", "0004_upstream_validators")]

    operations = [
        migrations.AddField(
            "cacheentry",
            "tags",
            models.TextField(blank=True, default="", help_text="labels for invalidation"),
        ),
    ]
