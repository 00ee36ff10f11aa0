"""The Celery application: worker and Beat read their configuration from Django settings."""

import os
from typing import Any

import structlog
from celery import Celery
from celery.signals import setup_logging, task_postrun
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django_structlog.celery.steps import DjangoStructLogInitStep

from core.env import exit_on_configuration_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

app = Celery("die_hard")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.on_configure.connect
def load_settings_or_exit(**_: Any) -> None:
    """Load the Django settings before Celery reads them, so a configuration error
    ends a worker or Beat with one line (as manage.py does), not a traceback from
    deep inside Celery's option parsing."""
    try:
        settings.INSTALLED_APPS  # noqa: B018 (the access loads the settings)
    except ImproperlyConfigured as exc:
        exit_on_configuration_error(exc)


app.autodiscover_tasks()
app.steps["worker"].add(DjangoStructLogInitStep)


@task_postrun.connect
def forget_the_finished_task(**_: Any) -> None:
    """Unbind the task's log context (its ``task_id`` …) when it ends.

    django-structlog binds it when a task starts and never clears it, so the worker's
    next lines — "Task … received" for the *next* task — carried the previous id.
    """
    structlog.contextvars.clear_contextvars()


@setup_logging.connect
def keep_django_logging(**_: Any) -> None:
    """Logging is configured once, by core.settings; Celery must not replace it."""
