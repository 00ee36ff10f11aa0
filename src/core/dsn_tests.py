"""Passwords in URLs never reach a message, whatever characters they hold, and a URL
that cannot be parsed is a one-line configuration error."""

from __future__ import annotations

import pytest

from conftest import run_manage
from core.endpoints import _endpoint
from core.logging import redact_personal_data
from core.security_tests import PRODUCTION
from event_log.clickhouse import mask_url

SECRET = "Zq9"  # noqa: S105 (the part of each password that must never be printed)

URLS = [
    f"http://relay:pa#{SECRET}@clickhouse:8123/die_hard",
    f"http://relay:pa/{SECRET}@clickhouse:8123/die_hard",
    f"http://relay:pa[{SECRET}@clickhouse:8123/die_hard",
    f"http://relay:pa@{SECRET}@clickhouse:8123/die_hard",
    f"http://relay:pa%23{SECRET}@clickhouse:8123/die_hard",
    f"http://clickhouse:8123/die_hard?user=relay&password=pa{SECRET}",
    f"redis://:pa{SECRET}@redis:6379/0",
]


@pytest.mark.parametrize("url", URLS)
def test_mask_url_hides_every_character_of_the_password(url):
    masked = mask_url(url)

    assert SECRET not in masked
    assert "***" in masked
    assert "8123" in masked or "6379" in masked, "the host and port stay readable"


@pytest.mark.parametrize("url", URLS)
def test_log_records_hide_every_character_of_the_password(url):
    event = redact_personal_data(None, "error", {"event": "x", "error": f"cannot reach {url}."})

    assert SECRET not in event["error"]


@pytest.mark.parametrize("url", [u for u in URLS if u.startswith("redis")])
def test_service_endpoints_print_urls_with_the_password_masked(url):
    assert SECRET not in _endpoint("REDIS_URL", url).url


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("CLICKHOUSE_URL", f"http://relay:pa#{SECRET}@clickhouse:8123/die_hard"),
        ("CLICKHOUSE_URL", f"http://relay:pa/{SECRET}@clickhouse:8123/die_hard"),
        ("CLICKHOUSE_URL", f"http://relay:pa[{SECRET}@clickhouse:8123/die_hard"),
        ("CLICKHOUSE_URL", f"http://relay:pa{SECRET}@[clickhouse:8123/die_hard"),
        ("REDIS_URL", f"redis://:pa#{SECRET}@redis:6379/0"),
        ("DATABASE_URL", f"postgres://app:pa[{SECRET}@db:5432/app"),
    ],
)
def test_a_malformed_url_is_a_one_line_configuration_error_without_its_password(variable, url):
    result = run_manage("check", env={**PRODUCTION, variable: url}, timeout=60)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{variable} is malformed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert SECRET not in result.stderr + result.stdout
