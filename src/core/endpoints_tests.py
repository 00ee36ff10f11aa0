"""``make services`` checks the URLs the service will use and names the one that fails."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import unused_port
from core.endpoints import Endpoint, service_endpoints

ROOT = Path(__file__).resolve().parents[2]


def _ensure_services(**overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PY": sys.executable, **overrides}
    return subprocess.run(
        [str(ROOT / "scripts" / "ensure-services.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_endpoints_are_the_settings_urls_with_passwords_masked(settings):
    settings.DATABASE_URL = "postgres://app:secret@db.internal/die_hard"
    settings.REDIS_URL = "redis://127.0.0.1:6380/0"
    settings.CELERY_BROKER_URL = "memory://"

    assert service_endpoints() == [
        Endpoint("DATABASE_URL", "db.internal", 5432, "postgres://app:***@db.internal/die_hard"),
        Endpoint("REDIS_URL", "127.0.0.1", 6380, "redis://127.0.0.1:6380/0"),
        Endpoint("CELERY_BROKER_URL", "", 0, "memory://"),
    ]
    assert not service_endpoints()[2].checkable


def test_ensure_services_passes_when_every_url_answers():
    result = _ensure_services()

    assert result.returncode == 0, result.stderr


def test_ensure_services_names_the_url_that_does_not_answer():
    port = unused_port()
    # 127.0.0.2 is not a local address the script would start a Redis on.
    result = _ensure_services(CELERY_BROKER_URL=f"redis://:secret@127.0.0.2:{port}/1")

    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: CELERY_BROKER_URL does not answer")
    assert f"127.0.0.2:{port}" in first
    assert "secret" not in result.stderr
    assert "REDIS_URL" not in result.stderr and "DATABASE_URL" not in result.stderr
