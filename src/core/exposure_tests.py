"""What a stranger can reach: /metrics only with a token or from an allowed network,
the API docs only where enabled, and a Content-Security-Policy on every response."""

from __future__ import annotations

import re

import pytest

from conftest import run_manage
from core.security_tests import PRODUCTION

TOKEN = "scrape-7d1e0c"  # noqa: S105 (a test token)


@pytest.fixture
def production_metrics(settings):
    settings.DEBUG = False
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = ["10.20.0.0/16"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("remote", "authorization", "status"),
    [
        ("203.0.113.5", "", 403),
        ("203.0.113.5", "Bearer wrong-token", 403),
        ("203.0.113.5", f"Bearer {TOKEN}", 200),
        ("10.20.3.4", "", 200),
        ("127.0.0.1", "", 403),
    ],
)
def test_metrics_need_a_token_or_an_allowed_network_when_debug_is_off(
    client, production_metrics, remote, authorization, status
):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}

    response = client.get("/metrics", REMOTE_ADDR=remote, **headers)

    assert response.status_code == status
    assert (b"event_log_outbox_depth" in response.content) is (status == 200)


@pytest.mark.django_db
def test_a_forged_forwarded_header_does_not_reach_the_metrics(client, production_metrics, settings):
    settings.NINJA_NUM_PROXIES = 0

    response = client.get("/metrics", REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR="10.20.3.4")

    assert response.status_code == 403


@pytest.mark.parametrize(
    ("enabled", "expected"), [(None, "None None"), ("true", "/docs /openapi.json")]
)
def test_api_docs_are_off_in_production_unless_enabled(enabled, expected):
    code = "from core.api import api; print(api.docs_url, api.openapi_url)"
    result = run_manage(
        "shell", "-c", code, env={**PRODUCTION, "API_DOCS_ENABLED": enabled}, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected


PAGES = ["/health", "/admin/login/", "/api/docs", "/api/openapi.json"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_every_response_carries_a_strict_content_security_policy(client, path):
    policy = client.get(path)["Content-Security-Policy"]

    assert "script-src 'self'" in policy
    assert "object-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "http" not in policy, "no third-party origin"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "staff"),
    [
        ("/admin/login/", False),
        ("/admin/", True),
        ("/admin/users/user/", True),
        ("/api/docs", False),
    ],
)
def test_admin_and_docs_pages_need_nothing_the_policy_forbids(client, admin_client, path, staff):
    html = (admin_client if staff else client).get(path).content.decode()

    scripts = re.findall(r"<script\b([^>]*)>", html)
    inline = [attrs for attrs in scripts if "src=" not in attrs and "application/json" not in attrs]
    assert scripts, "the page has scripts to check"
    assert not inline, f"inline scripts the policy blocks: {inline}"
    assert not re.search(r"<style\b|\sstyle=\"", html), "inline styles the policy blocks"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "a third-party resource"
