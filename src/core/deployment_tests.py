"""The deployed stack's configuration, checked: Compose requires every secret, publishes
the web port on loopback only, gives ClickHouse credentials only to the containers that
use them, makes Redis ask for a password; the root .env stays out of git and of the
image; the ClickHouse accounts are confined, capped and least-privileged."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
SECRETS = (
    "SECRET_KEY",
    "POSTGRES_PASSWORD",
    "POSTGRES_ADMIN_PASSWORD",
    "REDIS_PASSWORD",
    "CLICKHOUSE_RELAY_PASSWORD",
    "CLICKHOUSE_MIGRATOR_PASSWORD",
    "CLICKHOUSE_READER_PASSWORD",
)


def _compose() -> dict[str, Any]:
    return dict(YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text()))


def _env(service: str) -> dict[str, str]:
    return dict(_compose()["services"][service].get("environment", {}))


@pytest.mark.parametrize("secret", SECRETS)
def test_compose_requires_every_secret_and_defaults_none(secret):
    text = (ROOT / "docker-compose.yml").read_text()

    uses = re.findall(rf"\$\{{{secret}(:?[-?])", text)
    assert uses, f"{secret} is not used"
    assert set(uses) == {":?"}, f"{secret} has a default somewhere"


def test_compose_publishes_the_web_port_on_loopback_only():
    services = _compose()["services"]

    assert services["web"]["ports"] == ["127.0.0.1:8000:8000"]
    assert [name for name, service in services.items() if "ports" in service] == ["web"]


@pytest.mark.parametrize(
    ("service", "user"),
    [("web", None), ("beat", None), ("worker", "relay"), ("migrate", "migrator")],
)
def test_only_the_containers_that_use_clickhouse_get_its_credentials(service, user):
    url = _env(service)["CLICKHOUSE_URL"]

    if user is None:
        assert "@" not in url, f"{service} gets ClickHouse credentials it does not use"
    else:
        assert url.startswith(f"http://{user}:${{CLICKHOUSE_")


def test_searches_from_the_web_container_read_clickhouse_as_the_read_only_reader():
    assert _env("web")["CLICKHOUSE_READER_URL"].startswith(
        "http://reader:${CLICKHOUSE_READER_PASSWORD:?"
    )
    assert "CLICKHOUSE_READER_URL" not in _env("worker")


def test_redis_requires_a_password_and_the_apps_send_it():
    redis = _compose()["services"]["redis"]

    assert "--requirepass" in " ".join(redis["command"])
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        assert _env("web")[name].startswith("redis://:${REDIS_PASSWORD:?")


def test_the_root_env_file_stays_out_of_git_and_of_the_build_context():
    assert "/.env" in (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


def _users_config() -> ET.Element:
    return ET.parse(ROOT / "docker" / "clickhouse" / "users.d" / "die-hard.xml").getroot()  # noqa: S314 (our own file)


@pytest.mark.parametrize("user", ["relay", "migrator", "reader"])
def test_each_clickhouse_account_is_confined_to_the_stack_network_with_a_quota_and_a_time_cap(
    user,
):
    config = _users_config()
    account = config.find(f"users/{user}")
    assert account is not None

    networks = [ip.text for ip in account.findall("networks/ip")]
    profile = config.find(f"profiles/{account.findtext('profile')}")
    quota = config.find(f"quotas/{account.findtext('quota')}")
    subnet = _compose()["networks"]["backend"]["ipam"]["config"][0]["subnet"]

    assert networks == [subnet]
    assert account.find("password").get("from_env") == f"CLICKHOUSE_{user.upper()}_PASSWORD"
    assert profile is not None and int(profile.findtext("max_execution_time")) > 0
    assert profile.find("constraints/max_execution_time/max") is not None
    assert quota is not None and quota.find("interval/queries") is not None


def test_clickhouse_grants_are_least_privilege():
    config = _users_config()
    grants = {
        user.tag: [query.text for query in user.findall("grants/query")]
        for user in config.find("users")
    }
    reader = config.find("profiles/reader")

    assert grants == {
        "relay": [
            "GRANT INSERT, SELECT ON die_hard.event_log",
            "GRANT INSERT, SELECT ON die_hard.event_log_batches",
        ],
        "migrator": ["GRANT ALL ON die_hard.*"],
        "reader": ["GRANT SELECT ON die_hard.event_log"],
    }
    assert reader.findtext("readonly") in {"1", "2"}
    assert reader.find("constraints/readonly/const") is not None


# Actions whose release commit has not been looked up yet: pinned by release tag until
# Dependabot's github-actions update replaces the tag with the commit.
NOT_YET_PINNED = {"astral-sh/setup-uv", "docker/build-push-action"}


def test_workflow_actions_are_pinned_by_commit_with_the_release_in_a_comment():
    uses = re.findall(
        r"uses: ([\w./-]+)@(\S+)(.*)", (ROOT / ".github/workflows/ci.yml").read_text()
    )

    assert uses
    for action, ref, comment in uses:
        if action in NOT_YET_PINNED:
            continue
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{action}@{ref} is not a commit"
        assert re.fullmatch(r" # v\d+\.\d+\.\d+", comment), f"{action} names no release"


def test_the_image_installs_uv_only_with_a_matching_hash():
    dockerfile = (ROOT / "Dockerfile").read_text()
    requirements = (ROOT / "docker" / "uv-requirements.txt").read_text()

    assert "--require-hashes" in dockerfile and "-r uv-requirements.txt" in dockerfile
    assert re.search(r"^uv==\d+\.\d+\.\d+ \\$", requirements, re.M)
    assert len(re.findall(r"--hash=sha256:[0-9a-f]{64}", requirements)) >= 2


def test_dependabot_updates_the_lock_the_actions_and_the_images():
    config = YAML(typ="safe").load((ROOT / ".github" / "dependabot.yml").read_text())

    ecosystems = {update["package-ecosystem"] for update in config["updates"]}
    assert {"uv", "github-actions", "docker", "docker-compose"} <= ecosystems
