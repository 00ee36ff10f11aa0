from django.apps import AppConfig


class EventLogConfig(AppConfig):
    name = "event_log"
    verbose_name = "Event log"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from event_log import checks  # noqa: F401  (registers system checks)
