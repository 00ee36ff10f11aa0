from django.apps import AppConfig


class EventLogConfig(AppConfig):
    name = "event_log"
    verbose_name = "Event log"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery.signals import before_task_publish, task_postrun, task_prerun

        from event_log import (
            checks,  # noqa: F401  (registers system checks)
            envelope,
        )

        # The actor travels from the code that queues a task into the task (the request
        # id travels beside it, in django-structlog's header).
        before_task_publish.connect(envelope.task_queued, weak=False)
        task_prerun.connect(envelope.task_started, weak=False)
        task_postrun.connect(envelope.task_finished, weak=False)
