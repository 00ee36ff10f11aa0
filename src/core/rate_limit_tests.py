"""The sign-up rate limit: atomic under concurrency, keyed by the trusted client
address, and still bounded when the cache is down."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from django.core.cache import caches

from conftest import unused_port
from core.client_address import client_address, rate_limit_key
from core.rate_limit import FALLBACKS
from users.models import User


def _post(client: Any, email: str, **meta: str) -> int:
    return int(
        client.post(
            "/api/users", data={"email": email}, content_type="application/json", **meta
        ).status_code
    )


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_past_the_limit_get_exactly_the_limit_through(web_server):
    emails = [f"race-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(60)]
    start = threading.Barrier(len(emails))
    answers: dict[str, int] = {}

    def post(url: str, email: str) -> None:
        request = urllib.request.Request(
            f"{url}/api/users",
            data=json.dumps({"email": email}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        start.wait()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answers[email] = response.status
        except urllib.error.HTTPError as exc:
            answers[email] = exc.code

    # Two processes of 30 threads each, the real Redis cache between them.
    with web_server(workers=2, threads=30, API_USERS_CREATE_RATE="5/d") as url:
        threads = [threading.Thread(target=post, args=(url, email)) for email in emails]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    accepted = {email for email, status in answers.items() if status == 201}
    assert sorted(set(answers.values())) == [201, 429]
    assert len(accepted) == 5, answers
    created = list(User.objects.values_list("email", flat=True))
    assert set(created) == accepted
    assert len(created) == len(accepted)


@pytest.mark.django_db
def test_ipv6_clients_in_one_64_share_one_budget(client, settings):
    settings.API_USERS_CREATE_RATE = "2/d"
    caches["default"].clear()

    statuses = [
        _post(client, f"v6-{i}@example.com", REMOTE_ADDR=f"2001:db8:1:2::{i + 1:x}")
        for i in range(4)
    ]
    other_network = _post(client, "v6-other@example.com", REMOTE_ADDR="2001:db8:1:3::1")

    assert statuses == [201, 201, 429, 429]
    assert other_network == 201


@pytest.mark.django_db
def test_a_forged_forwarded_header_does_not_buy_a_new_budget(client, settings):
    settings.API_USERS_CREATE_RATE = "2/d"
    settings.NINJA_NUM_PROXIES = 0
    caches["default"].clear()

    statuses = [
        _post(
            client,
            f"forged-{i}@example.com",
            REMOTE_ADDR="198.51.100.7",
            HTTP_X_FORWARDED_FOR=f"203.0.113.{i}",
            HTTP_X_REAL_IP=f"203.0.113.{i}",
        )
        for i in range(4)
    ]

    assert statuses == [201, 201, 429, 429]


@pytest.mark.django_db
def test_an_ipv4_mapped_ipv6_address_counts_as_its_ipv4_address(client, settings):
    settings.API_USERS_CREATE_RATE = "1/d"
    caches["default"].clear()

    first = _post(client, "mapped-1@example.com", REMOTE_ADDR="192.0.2.10")
    second = _post(client, "mapped-2@example.com", REMOTE_ADDR="::ffff:192.0.2.10")

    assert (first, second) == (201, 429)


@pytest.mark.django_db
def test_with_the_cache_down_each_process_still_enforces_the_limit(client, settings):
    settings.API_USERS_CREATE_RATE = "3/d"
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": f"redis://127.0.0.1:{unused_port()}/0",
        }
    }
    before = FALLBACKS._value.get()

    statuses = [_post(client, f"down-{i}@example.com", REMOTE_ADDR="192.0.2.99") for i in range(5)]

    assert statuses == [201, 201, 201, 429, 429]
    assert FALLBACKS._value.get() - before == 5
    assert User.objects.count() == 3


@pytest.mark.parametrize(
    "case",
    [
        (0, "203.0.113.9", "10.0.0.2", "10.0.0.2"),
        (1, "6.6.6.6, 203.0.113.9", "10.0.0.2", "203.0.113.9"),
        (2, "6.6.6.6, 203.0.113.9, 10.0.0.3", "10.0.0.2", "203.0.113.9"),
        (1, "", "10.0.0.2", "10.0.0.2"),
        (1, "not-an-address", "10.0.0.2", "10.0.0.2"),
        (1, "[2001:DB8::1]:443", "10.0.0.2", "2001:db8::1"),
        (1, "203.0.113.9:51234", "10.0.0.2", "203.0.113.9"),
        (0, "", "::ffff:192.0.2.1", "192.0.2.1"),
    ],
)
def test_the_client_address_comes_from_trusted_proxies_only(rf, settings, case):
    num_proxies, forwarded, peer, expected = case
    settings.NINJA_NUM_PROXIES = num_proxies
    request = rf.get(
        "/", REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded, HTTP_X_REAL_IP="6.6.6.6"
    )

    assert client_address(request) == expected


def test_ipv6_rate_limit_prefix_is_configurable(settings):
    settings.RATE_LIMIT_IPV6_PREFIX = 56

    assert rate_limit_key("2001:db8:0:ff::1") == "2001:db8::/56"
    assert rate_limit_key("192.0.2.1") == "192.0.2.1"


@pytest.mark.django_db
def test_the_fallback_counter_is_exposed_to_prometheus(client):
    FALLBACKS.inc()

    body = client.get("/metrics").content.decode()

    assert "api_rate_limit_fallbacks_total" in body
