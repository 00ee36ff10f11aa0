"""The ASGI entry point, for an ASGI server (the image serves WSGI with gunicorn)."""

import os

from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured

from core.env import exit_on_configuration_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

try:
    application = get_asgi_application()
except ImproperlyConfigured as exc:
    # 4 is gunicorn's "application failed to load": it stops instead of re-spawning
    # workers that would all fail the same way.
    exit_on_configuration_error(exc, code=4)
