from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from core.login_audit import login_failed, login_succeeded

        user_logged_in.connect(login_succeeded, dispatch_uid="core.login_succeeded")
        user_login_failed.connect(login_failed, dispatch_uid="core.login_failed")
