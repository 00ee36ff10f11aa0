"""Personal data and secrets reach no log line, no Sentry envelope and no error page."""

from __future__ import annotations

import json
import sys
import uuid

import pytest
import sentry_sdk
from django.db import transaction
from django.test import Client, RequestFactory
from django.views.debug import technical_500_response

from event_log import publish
from event_log.relay import Relay
from users.events import UserCreated
from users.use_cases.create_user import CreateUser

ADA = "ada.lovelace@example.com"
PERSONAL = ("ada.lovelace", "Lovelace", "example.com")


def test_log_lines_redact_nested_values_positional_arguments_tracebacks_and_free_text(manage):
    code = (
        "import logging, structlog\n"
        "log = structlog.get_logger('x')\n"
        "log.warning('user_seen', user={'profile': {'email': 'ada.lovelace@example.com',"
        " 'last_name': 'Lovelace'}}, rows=[('ada.lovelace@example.com',)])\n"
        "log.warning('mail to %s refused', 'ada.lovelace@example.com')\n"
        "logging.getLogger('django').warning('plain %s', 'ada.lovelace@example.com')\n"
        "try:\n"
        "    raise ValueError('duplicate ada.lovelace@example.com')\n"
        "except ValueError:\n"
        "    log.exception('user_create_failed')\n"
        "    logging.getLogger('django').exception('stdlib %s', 'failed')\n"
        "log.warning('note', text='written by ada.lovelace@example.com at redis://:pw@r:6379/0')\n"
    )
    result = manage("shell", "-c", code, env={"LOG_FORMAT": "json"})

    lines = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert [line["event"] for line in lines] == [
        "user_seen",
        "mail to [email] refused",
        "plain [email]",
        "user_create_failed",
        "stdlib failed",
        "note",
    ]
    assert lines[0]["user"] == {"profile": {"email": "[redacted]", "last_name": "[redacted]"}}
    assert lines[0]["rows"] == [["[email]"]]
    assert "ValueError: duplicate [email]" in lines[3]["exception"]
    assert "ValueError: duplicate [email]" in lines[4]["exception"]
    assert lines[5]["text"] == "written by [email] at redis://:***@r:6379/0"
    for value in ("ada.lovelace", "Lovelace", ":pw@"):
        assert value not in result.stderr


def _debug_page_of_an_error(dsn: str) -> str:
    """The technical 500 page of an error raised where ``dsn`` is a local variable."""
    request = RequestFactory().get("/boom")
    try:
        raise RuntimeError(f"cannot connect to {dsn}")
    except RuntimeError:
        return technical_500_response(request, *sys.exc_info()).content.decode()


def test_the_debug_error_page_hides_every_url_password(settings):
    # Made at run time: the page also shows this test's source lines.
    pw = {name: uuid.uuid4().hex for name in ("db", "ch", "redis", "broker", "cache", "frame")}
    settings.DATABASE_URL = f"postgres://app:{pw['db']}@db:5432/app"
    settings.CLICKHOUSE_URL = f"http://relay:{pw['ch']}@clickhouse:8123/default"
    settings.REDIS_URL = f"redis://:{pw['redis']}@redis:6379/0"
    settings.CELERY_BROKER_URL = f"amqp://worker:{pw['broker']}@mq:5672//"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": [f"redis://:{pw['cache']}@redis:6379/2"],
        }
    }
    page = _debug_page_of_an_error(dsn=f"postgres://app:{pw['frame']}@db/app")

    assert "clickhouse:8123" in page, "the settings are on the page"
    assert "relay:***@clickhouse" in page
    assert [name for name, secret in pw.items() if secret in page] == []


@pytest.mark.django_db(transaction=True)
def test_an_api_500_sends_sentry_no_body_no_local_and_no_personal_value(
    monkeypatch, sentry_capture
):
    def fail_after_reading(self, request):
        email = request.email  # noqa: F841 — a local Sentry would have kept
        raise RuntimeError(f"cannot create {request.email} {request.last_name}")

    monkeypatch.setattr(CreateUser, "handle", fail_after_reading)
    client = Client(raise_request_exception=False)

    response = client.post(
        "/api/users",
        data=json.dumps({"email": ADA, "first_name": "Ada", "last_name": "Lovelace"}),
        content_type="application/json",
    )
    sentry_sdk.flush()

    assert response.status_code == 500
    assert not sentry_sdk.get_client().should_send_default_pii()
    [event] = sentry_capture.items("event")
    assert event["exception"]["values"][-1]["value"].startswith("cannot create [email]")
    everything = sentry_capture.everything()
    assert "RuntimeError" in everything
    assert "ada.lovelace" not in everything and "example.com" not in everything
    assert '"vars"' not in everything, "no frame carries its local variables"
    assert '"data"' not in json.dumps(event.get("request", {})), "no request body"


@pytest.mark.django_db(transaction=True)
def test_a_relay_failure_sends_sentry_no_row_no_local_and_no_url_password(ch, sentry_capture):
    with transaction.atomic():
        publish(
            *(
                UserCreated(
                    user_id=n,
                    email=f"ada.lovelace{n}@example.com",
                    first_name="Ada",
                    last_name="Lovelace",
                )
                for n in range(3)
            )
        )
    relay = Relay(clickhouse_url="http://relay:ch-s3cret@127.0.0.1:1/default")
    relay.config = type(relay.config)(BACKOFF_INITIAL=5, BACKOFF_MAX=5)

    report = relay.run(time_budget=1)
    sentry_sdk.flush()

    assert report.failures == 1
    assert sentry_capture.items("event"), "the failure reached Sentry"
    everything = sentry_capture.everything()
    for value in (*PERSONAL, "ch-s3cret"):
        assert value not in everything
    assert '"vars"' not in everything
