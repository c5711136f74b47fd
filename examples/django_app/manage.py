#!/usr/bin/env python
"""Django's command-line utility for the celery101 example (examples/django_app/README.md)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "celery101.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
