"""``manage.py ensure_database`` says which of its steps failed and why."""

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django.conf import settings

from conftest import run_manage, unused_port

BASE = {
    "ENV_FILE": "",
    "SECRET_KEY": "x" * 50,
    "CLICKHOUSE_URL": "chdb:///tmp/unused",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/1",
}


def _server() -> dict[str, object]:
    db = settings.DATABASES["default"]
    return {"host": db["HOST"] or "127.0.0.1", "port": db["PORT"] or 5432}


def _ensure(url: str):
    return run_manage("ensure_database", env={**BASE, "DATABASE_URL": url}, timeout=60)


@pytest.fixture
def role_without_createdb() -> Iterator[str]:
    """A login role that may connect but not create databases; dropped afterwards."""
    db = settings.DATABASES["default"]
    name = f"no_createdb_{uuid.uuid4().hex[:8]}"
    admin = {"user": db["USER"], "password": db.get("PASSWORD") or None, **_server()}
    with psycopg.connect(dbname="postgres", autocommit=True, **admin) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN NOCREATEDB')
    yield name
    with psycopg.connect(dbname="postgres", autocommit=True, **admin) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def test_a_user_that_cannot_log_in_is_reported_as_an_authentication_failure():
    server = _server()
    url = f"postgres://no_such_role_{uuid.uuid4().hex[:8]}@{server['host']}:{server['port']}/x"

    result = _ensure(url)

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "cannot authenticate to PostgreSQL" in line
    assert "does not exist" in line  # the server's own reason, on the same line
    assert "ALTER ROLE" in line and "PASSWORD" in line  # what to do, not only what failed
    assert "cannot create" not in line


def test_a_user_that_may_not_create_the_database_is_told_so(role_without_createdb):
    server = _server()
    name = f"never_created_{uuid.uuid4().hex[:8]}"
    url = f"postgres://{role_without_createdb}@{server['host']}:{server['port']}/{name}"

    result = _ensure(url)

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert f"cannot create database {name} as {role_without_createdb}" in line
    assert "permission denied" in line
    assert "cannot authenticate" not in line


def test_a_server_that_does_not_answer_is_reported_as_unreachable():
    result = _ensure(f"postgres://postgres@127.0.0.1:{unused_port()}/x")

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "cannot reach PostgreSQL at 127.0.0.1" in line
