"""The challenge template's three ``CreateUser`` tests, kept as they were written.

Only what the outbox design requires differs: the ClickHouse table comes from the
``clickhouse_url``/``ch`` fixtures (migrated, emptied per test) instead of the
template's client fixture, and the relay runs before ClickHouse is read, because
publishing now writes to the outbox and the relay ships it. ``UserCreated`` also
carries ``user_id`` now, so the expected context is built with it. Everything else — the
imports, ``response.result``, ``response.error`` and the duplicate message — is the
template's public interface, which these tests keep from breaking silently.
"""

import json
import uuid

import pytest
from django.conf import settings

from event_log.relay import run_relay
from users.use_cases import CreateUser, CreateUserRequest, UserCreated

pytestmark = [pytest.mark.django_db]


@pytest.fixture()
def f_use_case() -> CreateUser:
    return CreateUser()


def test_user_created(f_use_case: CreateUser) -> None:
    request = CreateUserRequest(
        email="test@email.com",
        first_name="Test",
        last_name="Testovich",
    )

    response = f_use_case.execute(request)

    assert response.result.email == "test@email.com"
    assert response.result.first_name == "Test"
    assert response.result.last_name == "Testovich"
    assert response.error == ""


def test_emails_are_unique(f_use_case: CreateUser) -> None:
    request = CreateUserRequest(
        email="test@email.com",
        first_name="Test",
        last_name="Testovich",
    )

    f_use_case.execute(request)
    response = f_use_case.execute(request)

    assert response.result is None
    assert response.error == "User with this email already exists"


@pytest.mark.django_db(transaction=True)
def test_event_log_entry_published(f_use_case: CreateUser, ch) -> None:
    email = f"test_{uuid.uuid4()}@email.com"
    request = CreateUserRequest(
        email=email,
        first_name="Test",
        last_name="Testovich",
    )

    response = f_use_case.execute(request)
    run_relay()  # outbox: the relay, not the use case, writes to ClickHouse

    log = ch.query(
        "SELECT event_type, environment, event_context, metadata_version "
        f"FROM {ch.table} WHERE event_type = 'user_created'"
    )

    assert log == [
        (
            "user_created",
            settings.ENVIRONMENT,
            UserCreated(
                user_id=response.result.id,
                email=email,
                first_name="Test",
                last_name="Testovich",
            ).model_dump_json(),
            1,
        ),
    ]
    assert json.loads(log[0][2])["email"] == email
