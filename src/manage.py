#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    # Events published by any command (a shell session included) name it as their actor.
    try:
        from event_log.envelope import acting_as, command_actor

        with acting_as(command_actor(sys.argv[1] if len(sys.argv) > 1 else "help")):
            execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        # A configuration mistake is the operator's to fix: one line, no traceback.
        sys.exit(f"configuration error: {exc}")


if __name__ == "__main__":
    main()
