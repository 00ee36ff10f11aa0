import subprocess
from pathlib import Path

import pytest

from users.models import User
from users.superusers import SuperuserError, ensure_superuser

ROOT = Path(__file__).resolve().parents[2]
PHRASE = "s3cret-enough"


@pytest.mark.django_db
def test_ensure_superuser_creates_one_with_optional_names_and_leaves_an_existing_one_alone():
    assert ensure_superuser(email="admin@example.com", password=PHRASE) is True
    assert ensure_superuser(email="ADMIN@example.com", password=PHRASE * 2, first_name="X") is False

    [user] = User.objects.all()
    assert (user.email, user.first_name, user.last_name) == ("admin@example.com", "", "")
    assert user.is_superuser and user.is_staff
    assert user.check_password(PHRASE)


@pytest.mark.django_db
@pytest.mark.parametrize(("email", "password"), [("not-an-address", "pw"), ("a@example.com", "")])
def test_ensure_superuser_refuses_bad_input_and_writes_nothing(email, password):
    with pytest.raises(SuperuserError):
        ensure_superuser(email=email, password=password)

    assert not User.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_ensure_superuser_runs_without_prompts_from_the_environment(manage):
    env = {
        "DJANGO_SUPERUSER_EMAIL": "ops@example.com",
        "DJANGO_SUPERUSER_PASSWORD": "s3cret-enough",
        "DJANGO_SUPERUSER_FIRST_NAME": "Grace",
    }
    first = manage("ensure_superuser", env=env)
    again = manage("ensure_superuser", env=env)
    check = manage(
        "shell",
        "-c",
        "from users.models import User; u = User.objects.get(email='ops@example.com'); "
        "print(u.is_superuser, repr(u.first_name), repr(u.last_name))",
    )

    assert first.returncode == 0, first.stderr
    assert "superuser ops@example.com created" in first.stdout
    assert again.returncode == 0 and "exists, left unchanged" in again.stdout
    assert check.stdout.strip().splitlines()[-1] == "True 'Grace' ''"


def test_make_superuser_uses_the_non_interactive_command_when_the_email_is_set():
    dry_run = subprocess.run(
        ["make", "-n", "--no-print-directory", "superuser", "DJANGO_SUPERUSER_EMAIL=x@example.com"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert "manage.py ensure_superuser" in dry_run.stdout
    assert "createsuperuser" not in dry_run.stdout


def test_make_install_writes_no_migration_files():
    dry_run = subprocess.run(
        ["make", "-n", "--no-print-directory", "install"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert "migrate --noinput" in dry_run.stdout
    assert "makemigrations" not in dry_run.stdout


def _user_created_contexts() -> list[dict]:
    import json

    from event_log.models import OutboxEvent

    return [
        json.loads(row.event_context)
        for row in OutboxEvent.objects.filter(event_type="user_created").order_by("id")
    ]


@pytest.mark.django_db
def test_ensure_superuser_publishes_user_created_once_for_the_account_it_creates():
    ensure_superuser(email="admin@example.com", password=PHRASE, first_name="Ada")
    ensure_superuser(email="admin@example.com", password=PHRASE)

    user = User.objects.get()
    assert _user_created_contexts() == [
        {"user_id": user.pk, "email": "admin@example.com", "first_name": "Ada", "last_name": ""}
    ]


@pytest.mark.django_db
def test_ensure_superuser_refuses_a_name_with_a_nul_and_writes_nothing():
    with pytest.raises(SuperuserError, match="control characters"):
        ensure_superuser(email="admin@example.com", password=PHRASE, last_name="A\x00")

    assert not User.objects.exists()


@pytest.mark.django_db
def test_createsuperuser_publishes_user_created_for_the_account_it_creates(monkeypatch):
    from django.core.management import call_command

    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PHRASE)
    call_command(
        "createsuperuser",
        "--noinput",
        email="root@example.com",
        first_name="Grace",
        last_name="Hopper",
        verbosity=0,
    )

    user = User.objects.get()
    assert user.is_superuser
    assert _user_created_contexts() == [
        {
            "user_id": user.pk,
            "email": "root@example.com",
            "first_name": "Grace",
            "last_name": "Hopper",
        }
    ]


@pytest.mark.django_db
def test_a_user_added_in_the_admin_publishes_user_created(admin_client):
    response = admin_client.post(
        "/admin/users/user/add/",
        {
            "email": "added@example.com",
            "first_name": "Alan",
            "last_name": "Turing",
            "password1": "a-long-enough-Passw0rd",
            "password2": "a-long-enough-Passw0rd",
        },
    )

    assert response.status_code == 302, response.content[:2000]
    user = User.objects.get(email="added@example.com")
    assert _user_created_contexts() == [
        {
            "user_id": user.pk,
            "email": "added@example.com",
            "first_name": "Alan",
            "last_name": "Turing",
        }
    ]
