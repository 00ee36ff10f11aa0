import subprocess
from pathlib import Path

import pytest

from conftest import run_manage

SRC = Path(__file__).resolve().parents[1]


STANDALONE = {
    "ENV_FILE": "/nonexistent",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
    "CLICKHOUSE_URL": "chdb:///tmp/unused",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/1",
    "SECRET_KEY": "x" * 50,
    "DEBUG": "false",
}


def _check(overrides: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    return run_manage("check", env={**STANDALONE, **overrides}, timeout=60)


def test_complete_environment_starts():
    result = _check({})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "name", ["DATABASE_URL", "CLICKHOUSE_URL", "CELERY_BROKER_URL", "SECRET_KEY"]
)
def test_missing_required_variable_stops_start_up_with_one_line_naming_it(name):
    result = _check({name: None})

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://root@localhost/x"),
        ("CLICKHOUSE_URL", "ftp://clickhouse"),
        ("DEBUG", "maybe"),
        ("EVENT_LOG_BATCH_SIZE", "many"),
        ("EVENT_LOG_BATCH_SIZE", "0"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_malformed_variable_stops_start_up_with_one_line_naming_it(name, value):
    result = _check({name: value})

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]


def test_debug_is_off_unless_set():
    code = "from django.conf import settings; print(settings.DEBUG)"
    result = run_manage("shell", "-c", code, env={**STANDALONE, "DEBUG": None}, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def test_relative_embedded_clickhouse_path_resolves_against_the_repository(monkeypatch, tmp_path):
    from core import env

    monkeypatch.setenv("CLICKHOUSE_URL", "chdb:var/clickhouse")
    monkeypatch.chdir(tmp_path)

    assert env.clickhouse_url("CLICKHOUSE_URL") == f"chdb://{env.REPO_ROOT / 'var' / 'clickhouse'}"
