"""Production-safe defaults, rate limits, masked secrets and staff-only operations."""

import json
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import transaction
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from conftest import Ping, run_manage
from core.logging import redact_personal_data
from event_log import Event, publish
from event_log.models import DeadLetter, OutboxEvent
from event_log.publisher import EventSerializationError
from users.models import User

SRC = Path(__file__).resolve().parents[1]

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "k8#v1q9!zr0$w7m2x5@c3b6n4h8j1l0p9o7i6u5y4t3r2e1w0q-long-and-random",
    "ALLOWED_HOSTS": "events.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://events.example.com",
    "SECURE_HSTS_PRELOAD": "true",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
    "CLICKHOUSE_URL": "https://relay:secret@clickhouse.example.com:8443/die_hard",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/1",
    "ENV_FILE": "",
}


def test_deploy_check_passes_with_production_settings():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_secret_key_has_no_fallback_outside_debug():
    result = run_manage("check", env={**PRODUCTION, "SECRET_KEY": None})

    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


@pytest.mark.django_db
def test_post_users_answers_429_past_the_rate_limit_per_client_address(client, settings):
    settings.API_USERS_CREATE_RATE = "3/min"
    cache.clear()

    statuses = [
        client.post(
            "/api/users", data={"email": f"u{i}@example.com"}, content_type="application/json"
        ).status_code
        for i in range(5)
    ]
    other = client.post(
        "/api/users",
        data={"email": "other@example.com"},
        content_type="application/json",
        REMOTE_ADDR="10.9.8.7",
    )

    assert statuses == [201, 201, 201, 429, 429]
    assert other.status_code == 201, "another client address has its own budget"
    assert User.objects.count() == 4


@pytest.mark.django_db
def test_oversized_request_body_is_refused_and_writes_nothing(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"email": "ada@example.com", "first_name": "x" * 4000})

    response = client.post("/api/users", data=body, content_type="application/json")

    assert response.status_code == 413
    assert User.objects.count() == 0


def test_url_passwords_and_personal_data_are_masked_in_log_records():
    event = redact_personal_data(
        None,
        "info",
        {
            "event": "x",
            "email": "ada@example.com",
            "error": "cannot reach http://relay:s3cret@ch:8123/db and redis://:pw@r:6379/0",
        },
    )

    assert event["email"] == "[redacted]"
    assert "s3cret" not in event["error"] and ":pw@" not in event["error"]
    assert "http://relay:***@ch:8123/db" in event["error"]


# -- staff-only operations -----------------------------------------------------


def _dead_letter() -> DeadLetter:
    import uuid
    from datetime import UTC, datetime

    return DeadLetter.objects.create(
        event_id=uuid.uuid4(),
        event_type="ping",
        event_date_time=datetime.now(UTC),
        environment="test",
        event_context='{"n": 1}',
        error="Code: 469. bad",
        error_code=469,
        batch_id=uuid.uuid4(),
    )


def _replay(client, letter):
    return client.post(
        "/admin/event_log/deadletter/",
        {"action": "replay", "_selected_action": [letter.pk]},
    )


@pytest.mark.django_db
def test_dead_letter_replay_is_refused_to_anonymous_and_to_non_staff(client):
    letter = _dead_letter()
    user = User.objects.create_user(email="plain@example.com")

    assert _replay(client, letter).status_code == 302  # to the login page
    client.force_login(user)
    assert _replay(client, letter).status_code == 302
    assert DeadLetter.objects.filter(pk=letter.pk).exists()
    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db
def test_staff_without_the_change_permission_cannot_replay(client):
    letter = _dead_letter()
    staff = User.objects.create_user(email="staff@example.com", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client.force_login(staff)

    response = _replay(client, letter)

    assert response.status_code in {200, 302, 403}
    assert DeadLetter.objects.filter(pk=letter.pk).exists()
    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db
def test_staff_with_the_permission_replays_into_the_outbox(admin_client):
    letter = _dead_letter()

    response = _replay(admin_client, letter)

    assert response.status_code == 302
    assert not DeadLetter.objects.exists()
    assert OutboxEvent.objects.get().event_id == letter.event_id


# -- fuzzing -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=10,
)


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.dictionaries(st.sampled_from(["email", "first_name", "last_name", "x"]), json_values)
    | json_values
)
def test_fuzzed_payloads_never_get_a_500_nor_a_partial_write(client, settings, payload):
    settings.API_USERS_CREATE_RATE = "100000/s"
    users_before = User.objects.count()
    events_before = OutboxEvent.objects.count()

    response = client.post("/api/users", data=json.dumps(payload), content_type="application/json")

    assert response.status_code in {201, 400, 409, 422}
    created = response.status_code == 201
    assert User.objects.count() == users_before + created
    assert OutboxEvent.objects.count() == events_before + created


hostile_names = st.text(
    alphabet=st.characters(codec=None, categories=None, exclude_categories=()), max_size=160
) | st.sampled_from(["\x00", "Ada\x00Lovelace", "\ud800", "\x1b[2J", "a\u202eb", "\r\n"])


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(email=st.emails(), first_name=hostile_names, last_name=hostile_names)
def test_valid_emails_with_hostile_names_get_201_409_or_422_never_a_500(
    client, settings, email, first_name, last_name
):
    settings.API_USERS_CREATE_RATE = "100000/s"
    users_before = User.objects.count()
    events_before = OutboxEvent.objects.count()
    body = {"email": email, "first_name": first_name, "last_name": last_name}

    response = client.post("/api/users", data=json.dumps(body), content_type="application/json")

    assert response.status_code in {201, 409, 422}, (response.status_code, body)
    created = response.status_code == 201
    assert User.objects.count() == users_before + created
    assert OutboxEvent.objects.count() == events_before + created


class Anything(Event):
    value: object


@pytest.mark.django_db
@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=json_values | st.builds(object) | st.sets(st.integers(), max_size=3))
def test_fuzzed_event_contexts_are_published_whole_or_refused_whole(value):
    before = OutboxEvent.objects.count()
    try:
        with transaction.atomic():
            publish(Ping(n=1), Anything(value=value))
    except EventSerializationError:
        assert OutboxEvent.objects.count() == before
    else:
        rows = OutboxEvent.objects.order_by("-id")[:1]
        json.loads(rows[0].event_context)  # valid JSON, as ClickHouse's CHECK requires
        assert OutboxEvent.objects.count() == before + 2


def test_an_https_clickhouse_url_makes_the_client_speak_tls():
    """Pointed at a plain-HTTP listener, an https:// client fails in the TLS handshake."""
    import http.server
    import threading

    from event_log.clickhouse import ClickHouseError, connect

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ClickHouseError) as failure:
            connect(f"https://relay:s3cret@127.0.0.1:{server.server_port}/default")
    finally:
        server.shutdown()
        server.server_close()

    message = str(failure.value).lower()
    assert "ssl" in message or "tls" in message or "wrong version" in message, message
    assert failure.value.transient


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("incoming", "kept"),
    [("req-7f3a9c", True), ("a" * 129, False), ("evil\nline", False), ("x y", False)],
)
def test_only_a_well_formed_incoming_request_id_is_honoured(client, incoming, kept):
    response = client.get("/health", HTTP_X_REQUEST_ID=incoming)

    echoed = response["X-Request-ID"]
    assert (echoed == incoming) is kept
    assert echoed
