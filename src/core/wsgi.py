"""The WSGI entry point (gunicorn in the image and in Compose)."""

import os

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

from core.env import exit_on_configuration_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

try:
    application = get_wsgi_application()
except ImproperlyConfigured as exc:
    # 4 is gunicorn's "application failed to load": it stops instead of re-spawning
    # workers that would all fail the same way.
    exit_on_configuration_error(exc, code=4)
