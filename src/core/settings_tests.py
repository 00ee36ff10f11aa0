import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import celery_argv, run_manage

SRC = Path(__file__).resolve().parents[1]


STANDALONE = {
    "ENV_FILE": "",
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
        ("DATABASE_PREPARED_STATEMENTS", "sometimes"),
        ("EVENT_LOG_BATCH_SIZE", "many"),
        ("EVENT_LOG_BATCH_SIZE", "0"),
        ("LOG_FORMAT", "xml"),
        ("CLICKHOUSE_URL", "chdb:"),
        ("CLICKHOUSE_URL", "chdb://"),
        ("CLICKHOUSE_URL", "chdb::memory:"),
        ("CLICKHOUSE_URL", "http://clickhouse:0/default"),
        ("CLICKHOUSE_URL", "http://clickhouse:80800/default"),
        ("CLICKHOUSE_URL", "http://clickhouse:port/default"),
        ("CLICKHOUSE_URL", "http://:8123/default"),
        ("CLICKHOUSE_URL", "http://clickhouse:8123/one/two"),
        ("CLICKHOUSE_READER_URL", "ftp://reader@clickhouse"),
        ("ENV_FILE", "no-such-settings.env"),
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


@pytest.mark.parametrize(("value", "threshold"), [(None, "5"), ("true", "5"), ("false", "None")])
def test_prepared_statements_are_on_unless_switched_off(value, threshold):
    code = "from django.conf import settings; print(settings.DATABASES['default']['OPTIONS'])"
    env = {**STANDALONE, "DATABASE_PREPARED_STATEMENTS": value}
    result = run_manage("shell", "-c", code, env=env, timeout=60)
    options = result.stdout.strip().splitlines()[-1]
    assert options == f"{{'prepare_threshold': {threshold}}}", result.stderr


def test_relative_embedded_clickhouse_path_resolves_against_the_repository(monkeypatch, tmp_path):
    from core import env

    monkeypatch.setenv("CLICKHOUSE_URL", "chdb:var/clickhouse")
    monkeypatch.chdir(tmp_path)

    assert env.clickhouse_url("CLICKHOUSE_URL") == f"chdb://{env.REPO_ROOT / 'var' / 'clickhouse'}"


def test_the_reader_url_is_optional_and_checked_like_clickhouse_url_when_set(monkeypatch):
    from core import env

    monkeypatch.delenv("CLICKHOUSE_READER_URL", raising=False)
    assert env.clickhouse_url("CLICKHOUSE_READER_URL", default="") == ""
    monkeypatch.setenv("CLICKHOUSE_READER_URL", "http://reader:pw@clickhouse:8123/die_hard")
    assert env.clickhouse_url("CLICKHOUSE_READER_URL", default="") == (
        "http://reader:pw@clickhouse:8123/die_hard"
    )


def test_a_relative_env_file_is_read_relative_to_the_repository_root(monkeypatch, tmp_path):
    from core import env

    settings_file = tmp_path / "settings.env"
    settings_file.write_text("ENVIRONMENT=from-the-file\n")
    monkeypatch.setenv("ENV_FILE", os.path.relpath(settings_file, env.REPO_ROOT))
    monkeypatch.chdir(SRC)  # where Celery runs (--workdir src): not the root

    assert env.env_file() == settings_file.resolve()


def test_without_env_file_only_src_core_env_is_read_never_the_ci_defaults(monkeypatch, tmp_path):
    from core import env

    monkeypatch.delenv("ENV_FILE", raising=False)
    monkeypatch.setattr(env, "ENV_FILE", tmp_path / ".env")
    assert env.env_file() is None

    (tmp_path / ".env").write_text("DEBUG=true\n")
    assert env.env_file() == tmp_path / ".env"


def test_an_empty_env_file_reads_no_file(monkeypatch):
    from core import env

    monkeypatch.setenv("ENV_FILE", "")

    assert env.env_file() is None


def test_a_missing_env_file_is_named_in_the_error():
    result = _check({"ENV_FILE": "src/core/.env.missing"})

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: ENV_FILE names 'src/core/.env.missing'")


@pytest.mark.parametrize("program", ["worker", "beat"])
def test_celery_worker_and_beat_report_a_configuration_error_in_one_line(program):
    env = {**os.environ, **STANDALONE}
    del env["SECRET_KEY"]

    result = subprocess.run(
        celery_argv(program, "--loglevel=INFO"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "configuration error: SECRET_KEY is not set (see src/core/.env.ci for an example)"
    ], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_gunicorn_reports_a_configuration_error_in_one_line_and_stops(tmp_path):
    env = {**os.environ, **STANDALONE, "PYTHONPATH": str(SRC)}
    del env["SECRET_KEY"]

    result = subprocess.run(
        [
            *(sys.executable, "-m", "gunicorn", "core.wsgi:application"),
            *("--chdir", str(SRC), "--bind", "127.0.0.1:0", "--no-control-socket"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 4  # gunicorn: the application failed to load; no respawn
    assert "Traceback" not in output
    assert output.count("configuration error: SECRET_KEY is not set (see src/core/.env.ci") == 1, (
        output
    )


def _new_env_file(target: Path, checkout: str) -> subprocess.CompletedProcess[str]:
    script = SRC.parent / "scripts" / "new-env-file.sh"
    return subprocess.run(
        [str(script), str(target), checkout], capture_output=True, text=True, check=False
    )


def _settings_lines(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_two_checkouts_get_their_own_database_queue_and_cache_prefix(tmp_path):
    first, second = tmp_path / "first.env", tmp_path / "second.env"

    assert _new_env_file(first, "/home/ada/die-hard").returncode == 0
    assert _new_env_file(second, "/home/ada/die-hard-copy").returncode == 0

    one, two = _settings_lines(first), _settings_lines(second)
    own = {"DATABASE_URL", "CELERY_QUEUE", "CACHE_KEY_PREFIX"}
    for name in own:
        assert one[name] != two[name], name
    assert one["DATABASE_URL"].startswith("postgres://postgres@127.0.0.1:5432/die_hard_")
    # Everything else is the local defaults, unchanged.
    defaults = _settings_lines(SRC / "core" / ".env.ci")
    assert {k: v for k, v in one.items() if k not in own} == {
        k: v for k, v in defaults.items() if k not in own
    }


def test_the_settings_file_is_never_overwritten(tmp_path):
    target = tmp_path / ".env"
    target.write_text("DEBUG=false\n")

    result = _new_env_file(target, "/home/ada/die-hard")

    assert result.returncode == 1
    assert target.read_text() == "DEBUG=false\n"
