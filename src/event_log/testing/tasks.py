"""A Celery task that publishes, for tests of the envelope through a real worker.

Loaded only by a test's own worker (``celery worker --include event_log.testing.tasks``);
the service's workers never import it.
"""

from __future__ import annotations

from celery import shared_task
from django.db import transaction

from event_log import Event, publish


class ProbePublished(Event):
    """What :func:`publish_probe` publishes."""

    n: int


@shared_task(name="event_log.testing.publish_probe", ignore_result=True)
def publish_probe(*, n: int) -> None:
    with transaction.atomic():
        publish(ProbePublished(n=n))
