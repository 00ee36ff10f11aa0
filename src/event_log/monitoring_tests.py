"""The Grafana dashboard and the Prometheus alert rules: valid, tested, and about real series."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "prometheus" / "rules"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "event_log.json"
METRIC_NAME = re.compile(r"\bevent_log_[a-z_]+\b")


def _promtool() -> str:
    """promtool's path; in CI its absence fails the test, elsewhere it skips with the fix."""
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool not found: `make tools` installs Debian's prometheus package (as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    promtool = _promtool()
    for args in (
        ["check", "rules", "event_log.yml", "verify.yml"],
        ["test", "rules", "event_log_tests.yml"],
    ):
        done = subprocess.run(
            [promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _served_metric_names(client) -> set[str]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        sample.name
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


@pytest.mark.django_db
def test_the_dashboard_names_only_series_that_metrics_serves(client):
    served = _served_metric_names(client)
    used = {name for expr in _dashboard_expressions() for name in METRIC_NAME.findall(expr)}

    assert used, "the dashboard queries the event log's series"
    assert used <= served, f"not served by /metrics: {sorted(used - served)}"


@pytest.mark.django_db
def test_the_dashboard_shows_every_series_that_metrics_serves(client):
    served = _served_metric_names(client)
    used = {name for expr in _dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    # Histograms are shown through their buckets, sum and count; _created is bookkeeping.
    wanted = {name for name in served if name.startswith("event_log_")}
    wanted = {n for n in wanted if not n.endswith("_created")}

    assert wanted <= used, f"not on the dashboard: {sorted(wanted - used)}"


@pytest.mark.django_db
def test_the_alert_rules_name_only_series_that_metrics_serves(client):
    served = _served_metric_names(client)
    rules = "\n".join(
        line.split("#", 1)[0]
        for name in ("event_log.yml", "verify.yml")
        for line in (RULES / name).read_text().splitlines()
    )
    used = set(METRIC_NAME.findall(rules))

    assert used, "the rules watch the event log's series"
    assert used <= served, f"not served by /metrics: {sorted(used - served)}"
