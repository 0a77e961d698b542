"""On SQLite, switch the file to ``auto_vacuum = INCREMENTAL``, once.

Without it, a file keeps its size after rows are deleted (a purge that
removed every row left a 127 MB file), so the persistent tier's size bound
could not give space back. The mode of an existing file only changes with a
``VACUUM``, which rewrites the whole file (it takes time proportional to the
file, and as much free disk again, once); a new file is switched before it
has any rows, at no cost. Other databases: nothing to do (PostgreSQL reuses
the space of deleted rows).
"""

from __future__ import annotations

from django.db import migrations

INCREMENTAL = 2


def incremental_vacuum(apps, schema_editor) -> None:
    connection = schema_editor.connection
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA auto_vacuum")
        if cursor.fetchone()[0] == INCREMENTAL:
            return
        cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
        cursor.execute("VACUUM")


class Migration(migrations.Migration):
    # VACUUM cannot run inside a transaction.
    atomic = False

    dependencies = [("coalescing", "0001_initial")]

    operations = [
        migrations.RunPython(incremental_vacuum, migrations.RunPython.noop, elidable=True),
    ]
