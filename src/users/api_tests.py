import json

import pytest

from users.models import User

pytestmark = pytest.mark.django_db

URL = "/api/users"


def _post(client, body, *, content_type="application/json"):
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(URL, data=data, content_type=content_type)


def test_post_users_creates_a_user_and_answers_201(client):
    response = _post(client, {"email": "ada@example.com", "first_name": "Ada", "last_name": "L"})

    assert response.status_code == 201
    body = response.json()
    assert body["email"] == "ada@example.com"
    assert body["first_name"] == "Ada"
    assert User.objects.filter(pk=body["id"]).exists()


def test_duplicate_email_answers_409(client):
    _post(client, {"email": "ada@example.com"})

    response = _post(client, {"email": "ada@example.com"})

    assert response.status_code == 409
    assert response.json() == {"detail": "User with this email already exists"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": "ada@example.com", "first_name": "x" * 151}, "first_name"),
        ({"email": "ada@example.com", "last_name": "x" * 151}, "last_name"),
        ({"email": "ada@example.com", "is_staff": True}, "is_staff"),
        ({}, "email"),
    ],
)
def test_invalid_payload_answers_422_with_field_errors_and_writes_nothing(client, payload, field):
    response = _post(client, payload)

    assert response.status_code == 422
    fields = {error["loc"][-1] for error in response.json()["detail"]}
    assert field in fields
    assert User.objects.count() == 0


@pytest.mark.parametrize("body", ['{"email": ', "not json", "[1, 2"])
def test_malformed_json_answers_400(client, body):
    response = _post(client, body)

    assert response.status_code == 400
    assert response.json()["detail"] == "Cannot parse request body"
    assert User.objects.count() == 0


def test_openapi_docs_are_served(client):
    assert client.get("/api/docs").status_code == 200
    schema = client.get("/api/openapi.json").json()
    assert "/api/users" in schema["paths"]


def test_admin_lists_users_for_staff(admin_client):
    User.objects.create_user(email="ada@example.com")

    response = admin_client.get("/admin/users/user/")

    assert response.status_code == 200
    assert b"ada@example.com" in response.content


def test_admin_requires_staff_login(client):
    response = client.get("/admin/users/user/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
