"""``make loadtest``'s pieces without any load: settings, verdicts and the report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import loadtest  # noqa: E402
import report  # noqa: E402


def test_loadtest_sizes_come_from_environment_variables() -> None:
    config = loadtest.Config.from_env({"LOADTEST_STEP_SECONDS": "60", "LOADTEST_MAX_STEPS": "3"})

    assert config.step_seconds == 60.0
    assert config.max_steps == 3
    assert config.outage_seconds == loadtest.Config().outage_seconds


@pytest.mark.parametrize("raw", ["soon", "0", "-5"])
def test_loadtest_rejects_a_size_that_is_not_a_positive_number(raw: str) -> None:
    with pytest.raises(ValueError, match="LOADTEST_HOLD_SECONDS"):
        loadtest.Config.from_env({"LOADTEST_HOLD_SECONDS": raw})


def test_outbox_rising_over_the_last_half_is_growing_and_a_flat_one_is_not() -> None:
    flat = [(float(t), 10 + t % 3) for t in range(20)]
    rising = [(float(t), 50 * t) for t in range(20)]

    assert not loadtest.growing(flat, rate=40)
    assert loadtest.growing(rising, rate=40)


def test_loadtest_report_renders_a_synthetic_run() -> None:
    samples = [loadtest.Sample(due=0.0, latency_s=0.01, status=201, user_id=n) for n in range(10)]
    window = loadtest.request_stats(samples, seconds=1.0)
    window.update(rate=10.0, outbox_depth_max=3, outbox_growing=False, sustained=True)
    hold = {
        **window,
        "cpu_cores": {"web": 0.5, "worker": 0.2, "postgres": 0.3, "load": 0.1},
        "commit_to_clickhouse": {"events": 10, "p50_ms": 120.0, "p99_ms": 300.0},
    }
    load = {
        "config": {"step_seconds": 1.0, "hold_seconds": 1.0},
        "p99_max_ms": 100.0,
        "ramp": [window],
        "sustained_rate": 10.0,
        "holds": {"50": hold, "90": hold},
        "outage": {
            "outage_seconds": 1.0,
            "before": window,
            "during": window,
            "after": window,
            "drain_seconds": 0.5,
            "backlog_at_restart": 12,
        },
        "exactly_once": {"ok": True, "users_created": 10, "clickhouse_rows": 10, "detail": "ok"},
    }
    load["comparison"] = loadtest.compare(load)

    text = "\n".join(report.load_lines(load))
    verdicts = report.targets({"load": load})

    assert "highest rate held" in text
    assert "0.001x the rate" in text
    assert [v["status"] for v in verdicts] == ["PASS", "OK"]
