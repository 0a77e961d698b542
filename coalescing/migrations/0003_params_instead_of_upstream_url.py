"""An entry keeps the endpoint's parameters it came from, not the upstream URL.

A refresh replayed the stored URL: a bare GET to the host and port of the
day the entry was made, without the endpoint's headers or body. It now
builds the request again through the endpoint from these parameters.
Rows made before hold a URL, not parameters: they are emptied, and such an
entry is refreshed by its next request instead (it is served as before).
"""

from django.db import migrations, models


def forget_urls(apps, schema_editor) -> None:
    CacheEntry = apps.get_model("coalescing", "CacheEntry")
    CacheEntry.objects.using(schema_editor.connection.alias).exclude(params="").update(params="")


class Migration(migrations.Migration):
    dependencies = [("coalescing", "0002_sqlite_incremental_vacuum")]

    operations = [
        migrations.RenameField("cacheentry", "upstream_url", "params"),
        migrations.AlterField(
            "cacheentry",
            "params",
            models.TextField(
                blank=True,
                help_text="the endpoint's parameters it came from: how a refresh repeats it",
            ),
        ),
        migrations.RunPython(forget_urls, migrations.RunPython.noop),
    ]
