import json
import re

import pytest
from django.conf import settings

from event_log.models import OutboxEvent
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("first_name", "Ada\u0000"),
        ("last_name", "Love\u0000lace"),
        ("first_name", "Ada\nLovelace"),
        ("last_name", "\u001b[31mred"),
    ],
)
def test_a_name_with_a_nul_or_control_character_answers_422_and_writes_nothing(
    client, field, value
):
    # json.dumps writes each of them as a \u escape, as a hostile client would.
    response = _post(client, {"email": "ada@example.com", field: value})

    assert response.status_code == 422, response.content
    [error] = response.json()["detail"]
    assert error["loc"][-1] == field
    assert "control characters" in error["msg"]
    assert User.objects.count() == 0
    assert OutboxEvent.objects.count() == 0


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


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", json.dumps({"email": "ada@example.com"})),
        ("application/x-www-form-urlencoded", "email=ada%40example.com"),
        ("multipart/form-data; boundary=x", "--x--"),
        ("", json.dumps({"email": "ada@example.com"})),
    ],
)
def test_a_body_that_is_not_json_answers_415_and_writes_nothing(client, content_type, body):
    response = client.post(URL, data=body, content_type=content_type)

    assert response.status_code == 415
    assert response.json() == {"detail": "Unsupported media type: send application/json"}
    assert User.objects.count() == 0


def test_json_with_a_charset_is_accepted(client):
    response = _post(
        client, {"email": "ada@example.com"}, content_type="application/json; charset=utf-8"
    )

    assert response.status_code == 201


def test_openapi_lists_every_answer_of_post_users_with_its_schema(client):
    schema = client.get("/api/openapi.json").json()
    responses = schema["paths"]["/api/users"]["post"]["responses"]

    assert set(responses) == {"201", "400", "409", "413", "415", "422", "429"}
    for status, answer in responses.items():
        ref = answer["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[1] in schema["components"]["schemas"], status
    assert responses["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/CreatedUser"
    )
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ValidationErrorOut"
    )


def test_swagger_ui_is_served_from_the_installed_package_not_a_cdn(client):
    from django.contrib.staticfiles import finders

    page = client.get("/api/docs").content.decode()

    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)
    prefix = "/" + settings.STATIC_URL.strip("/") + "/"
    assert assets, page
    for asset in assets:
        assert asset.startswith(prefix), asset
        assert finders.find(asset.removeprefix(prefix)), asset
    assert "cdn" not in page.lower()
