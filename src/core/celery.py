"""The Celery application: worker and Beat read their configuration from Django settings."""

import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from django_structlog.celery.steps import DjangoStructLogInitStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

app = Celery("die_hard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.steps["worker"].add(DjangoStructLogInitStep)


@setup_logging.connect
def keep_django_logging(**_: Any) -> None:
    """Logging is configured once, by core.settings; Celery must not replace it."""
