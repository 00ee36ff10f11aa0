"""One client address everywhere: log lines and audit records follow NUM_PROXIES, and a
client-chosen request id reaches the logs only when the operator trusts the proxy."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from conftest import run_manage
from core.security_tests import PRODUCTION


def _logged_ips(client, **headers: str) -> set[str]:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        client.get("/health", **headers)
    return {entry["ip"] for entry in logs if entry.get("event") == "request_started"}


@pytest.mark.django_db
def test_log_lines_carry_the_peer_address_not_a_forged_forwarded_header(client, settings):
    settings.NINJA_NUM_PROXIES = 0

    ips = _logged_ips(
        client,
        REMOTE_ADDR="198.51.100.7",
        HTTP_X_FORWARDED_FOR="203.0.113.66",
        HTTP_X_REAL_IP="203.0.113.77",
    )

    assert ips == {"198.51.100.7"}


@pytest.mark.django_db
def test_log_lines_carry_the_address_the_trusted_proxy_saw(client, settings):
    settings.NINJA_NUM_PROXIES = 1

    ips = _logged_ips(
        client,
        REMOTE_ADDR="10.0.0.2",
        HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9",
        HTTP_X_REAL_IP="6.6.6.6",
    )

    assert ips == {"203.0.113.9"}


@pytest.mark.django_db
def test_an_incoming_request_id_is_ignored_unless_upstream_is_trusted(client, settings):
    settings.DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID = False

    response = client.get("/health", HTTP_X_REQUEST_ID="chosen-by-the-client")

    assert response["X-Request-ID"] != "chosen-by-the-client"


def test_upstream_request_ids_are_not_trusted_by_default_outside_debug():
    code = (
        "from django.conf import settings; "
        "print(settings.DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID)"
    )
    result = run_manage("shell", "-c", code, env=PRODUCTION, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
