#!/usr/bin/env python
"""Django's command-line utility, with gevent patched first for ``serve``."""

import os
import sys

if len(sys.argv) > 1 and sys.argv[1] == "serve":
    # Before anything else is imported: sockets, threads and time must be
    # cooperative everywhere, Django's and the database drivers' included.
    from gevent import monkey

    monkey.patch_all()


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coalesce_project.settings")
    from django.core.exceptions import ImproperlyConfigured

    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A bad setting: one clear line naming it, not a traceback.
        sys.stderr.write(f"Configuration error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
