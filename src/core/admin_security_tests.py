"""The admin resists password guessing, records every login, ends idle sessions,
refuses short staff passwords and lives at a path of the operator's choosing."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.urls import reverse
from structlog.testing import capture_logs

from conftest import run_manage
from core.security_tests import PRODUCTION
from users.models import User
from users.superusers import SuperuserError, ensure_superuser

PASSWORD = "correct-horse-battery-staple"  # noqa: S105


@pytest.fixture
def staff(db):
    return User.objects.create_superuser("ops@example.com", PASSWORD)


def _login(client, password: str, **meta: str) -> int:
    response = client.post(
        reverse("admin:login"), {"username": "ops@example.com", "password": password}, **meta
    )
    return int(response.status_code)


def test_admin_login_locks_the_client_out_after_repeated_failures(client, staff, settings):
    settings.AXES_FAILURE_LIMIT = 3

    failures = [_login(client, f"guess-{i}", REMOTE_ADDR="198.51.100.9") for i in range(3)]
    with_the_right_password = _login(client, PASSWORD, REMOTE_ADDR="198.51.100.9")
    another_client = _login(client, PASSWORD, REMOTE_ADDR="198.51.100.10")

    assert failures == [200, 200, 429]  # the form again, then locked out
    assert with_the_right_password == 429
    assert "_auth_user_id" in client.session, "a client that was not locked out logs in"
    assert another_client == 302


def test_failed_and_successful_logins_are_recorded_with_the_trusted_address(
    client, staff, settings
):
    settings.NINJA_NUM_PROXIES = 0
    forged = {"HTTP_X_FORWARDED_FOR": "203.0.113.66", "HTTP_X_REAL_IP": "203.0.113.77"}

    with capture_logs() as logs:
        _login(client, "wrong-password-1", REMOTE_ADDR="198.51.100.9", **forged)
        _login(client, PASSWORD, REMOTE_ADDR="198.51.100.9", **forged)

    assert list(AccessFailureLog.objects.values_list("ip_address", "username")) == [
        ("198.51.100.9", "ops@example.com")
    ]
    assert list(AccessLog.objects.values_list("ip_address", "username")) == [
        ("198.51.100.9", "ops@example.com")
    ]
    assert not AccessAttempt.objects.exists(), "a success resets the failure count"
    events = [(e["event"], e["ip"]) for e in logs if e["event"].startswith("admin_login")]
    assert events == [
        ("admin_login_failed", "198.51.100.9"),
        ("admin_login_succeeded", "198.51.100.9"),
    ]
    assert all(PASSWORD not in repr(entry) for entry in logs)


def test_staff_sessions_expire_after_the_idle_timeout_and_each_request_extends_them(
    admin_client, settings
):
    settings.SESSION_COOKIE_AGE = 900

    response = admin_client.get(reverse("admin:index"))

    assert response.status_code == 200
    assert response.cookies[settings.SESSION_COOKIE_NAME]["max-age"] == 900


@pytest.mark.django_db
def test_a_staff_password_under_twelve_characters_is_refused_and_nothing_written():
    with pytest.raises(SuperuserError, match="at least 12 characters"):
        ensure_superuser(email="short@example.com", password="Tr0ub4dor&3")  # noqa: S106

    assert not User.objects.filter(email="short@example.com").exists()


def test_the_admin_path_is_configurable():
    code = "from django.urls import reverse; print(reverse('admin:index'))"
    result = run_manage(
        "shell", "-c", code, env={**PRODUCTION, "ADMIN_URL": "ops-7f3a/"}, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "/ops-7f3a/"
