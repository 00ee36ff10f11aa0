import pytest
from django.db import connection
from pydantic import ValidationError

from core.use_case import UseCase, UseCaseRequest, UseCaseResponse
from event_log.models import OutboxEvent
from users.models import User
from users.use_cases import CreateUser, CreateUserRequest, CreateUserResponse
from users.use_cases.create_user import DUPLICATE_EMAIL

pytestmark = pytest.mark.django_db


def _request(email: str = "ada@example.com") -> CreateUserRequest:
    return CreateUserRequest(email=email, first_name="Ada", last_name="Lovelace")


def test_create_user_returns_the_user_and_no_error():
    response = CreateUser().execute(_request())

    assert response.error == ""
    assert response.user is not None
    user = User.objects.get(pk=response.user.id)
    assert (user.email, user.first_name, user.last_name) == ("ada@example.com", "Ada", "Lovelace")
    assert user.is_active and not user.is_staff
    assert user.created_at is not None and user.updated_at is not None


def test_duplicate_email_is_refused_case_insensitively():
    CreateUser().execute(_request("ada@example.com"))

    response = CreateUser().execute(_request("ADA@example.com"))

    assert response.error == DUPLICATE_EMAIL == "User with this email already exists"
    assert response.user is None
    assert User.objects.count() == 1


def test_create_user_publishes_user_created_in_the_same_transaction():
    response = CreateUser().execute(_request())

    [row] = OutboxEvent.objects.all()
    assert row.event_type == "user_created"
    assert f'"user_id":{response.user.id}' in row.event_context


def test_a_failure_after_the_user_insert_rolls_the_user_back(monkeypatch):
    def explode(*events):
        raise RuntimeError("publish failed")

    monkeypatch.setattr("users.use_cases.create_user.publish", explode)

    with pytest.raises(RuntimeError, match="publish failed"):
        CreateUser().execute(_request())

    assert not User.objects.filter(email="ada@example.com").exists()
    assert OutboxEvent.objects.count() == 0


def test_a_use_case_cannot_override_execute():
    with pytest.raises(TypeError, match="implement handle"):

        class Sneaky(UseCase[UseCaseRequest, UseCaseResponse]):
            def execute(self, request):  # type: ignore[misc]
                return UseCaseResponse()


def test_a_response_with_an_error_rolls_back_its_writes():
    class Refuses(UseCase[UseCaseRequest, UseCaseResponse]):
        def handle(self, request):
            User.objects.create_user(email="half@example.com")
            return UseCaseResponse(error="refused")

    assert Refuses().execute(UseCaseRequest()).error == "refused"
    assert not User.objects.filter(email="half@example.com").exists()


@pytest.mark.django_db(transaction=True)
def test_execute_runs_inside_a_transaction_even_from_autocommit():
    seen = []

    class Probe(UseCase[UseCaseRequest, UseCaseResponse]):
        def handle(self, request):
            seen.append(connection.in_atomic_block)
            return UseCaseResponse()

    assert not connection.in_atomic_block
    Probe().execute(UseCaseRequest())
    assert seen == [True]


def test_user_is_the_result_under_a_readable_name_not_a_copy():
    response = CreateUser().execute(_request())

    assert response.user is response.result
    assert response.result.email == "ada@example.com"


def test_a_response_refuses_unknown_fields_so_an_alias_cannot_be_passed_as_one():
    with pytest.raises(ValidationError, match="user"):
        CreateUserResponse(user=None)


@pytest.mark.parametrize("name", ["Ada\x00", "Ada\x07", "A\u0085da"])
def test_a_name_with_a_control_character_is_refused_with_a_clear_error(name):
    with pytest.raises(ValidationError, match="must not contain control characters"):
        CreateUserRequest(email="ada@example.com", first_name="x", last_name=name)

    assert User.objects.count() == 0
