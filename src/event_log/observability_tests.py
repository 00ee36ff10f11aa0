"""Logs, Sentry, /health, /metrics and the status command, on real processes and databases."""

import gzip
import http.server
import json
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import ClassVar

import pytest
import redis
import sentry_sdk
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection, transaction
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from conftest import RUN_ID, WORKER, Ping, celery_argv, running, unused_port, wait_until
from event_log import publish
from event_log.kick import KICK_PENDING_KEY
from event_log.models import DeadLetter, OutboxEvent
from event_log.relay import Relay, run_relay

pytestmark = pytest.mark.django_db(transaction=True)

SRC = Path(__file__).resolve().parents[1]


def json_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


@pytest.mark.slow
def test_request_id_travels_from_the_api_call_to_the_event_row_and_every_log_line(
    ch, process_env, tmp_path
):
    env = {
        **process_env,
        "LOG_FORMAT": "json",
        "EVENT_LOG_KICK": "true",
        "DEBUG": "false",
        # The id comes from the caller here, as from a trusted proxy (off by default).
        "TRUST_UPSTREAM_REQUEST_ID": "true",
        "EVENT_LOG_RELAY_INTERVAL": "600",
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "DEBUG",
    }
    broker = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    broker.delete(RUN_ID)
    from django.core.cache import cache

    cache.delete(KICK_PENDING_KEY)
    port = unused_port()
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    gunicorn = [sys.executable, "-m", "gunicorn", "core.wsgi:application", "--chdir", str(SRC)]
    with (
        running([*gunicorn, "--bind", f"127.0.0.1:{port}", "--workers", "1"], env=env, log=web_log),
        running(celery_argv(*WORKER), env=env, log=worker_log),
    ):
        wait_until(lambda: b"ready" in worker_log.read_bytes(), timeout=60)
        wait_until(lambda: b"Listening at" in web_log.read_bytes(), timeout=60)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/users",
            data=json.dumps({"email": "ada@example.com"}).encode(),
            headers={"Content-Type": "application/json", "X-Request-ID": "req-7f3a9c"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201
            assert response.headers["X-Request-ID"] == "req-7f3a9c"
        wait_until(lambda: not OutboxEvent.objects.exists(), timeout=60)
    broker.delete(RUN_ID)
    broker.close()

    published = [
        line for line in json_lines(web_log) if line.get("event") == "outbox_events_published"
    ]
    delivered = [
        line for line in json_lines(worker_log) if line.get("event") == "outbox_batch_delivered"
    ]
    kicks = [
        line
        for line in json_lines(web_log)
        if line.get("event") == "task_enqueued"
        and line.get("child_task_name") == "event_log.tasks.relay_outbox"
    ]
    assert [line["request_id"] for line in published] == ["req-7f3a9c"]
    assert published[0]["event_types"] == ["user_created"]
    assert [line["request_id"] for line in kicks] == ["req-7f3a9c"]
    # The relay run carries the kick's request id; its batch names its first event's.
    assert [line["request_id"] for line in delivered] == ["req-7f3a9c"]
    assert [line["first_request_id"] for line in delivered] == ["req-7f3a9c"]
    assert delivered[0]["rows"] == 1 and delivered[0]["batch_id"]
    assert "ada@example.com" not in web_log.read_text() + worker_log.read_text()
    [event_id] = ch.event_ids()
    assert published[0]["event_ids"] == [str(event_id)]
    # The event row itself says which request, and who, made it.
    assert ch.query(f"SELECT event_id, request_id, actor_type, subject_type FROM {ch.table}") == [
        (event_id, "req-7f3a9c", "api_client", "user")
    ]


def test_sentry_gets_the_failing_batch_with_its_id_rows_and_clickhouse_error(ch, sentry_capture):
    with transaction.atomic():
        publish(*(Ping(n=i) for i in range(7)))
    relay = Relay(clickhouse_url="http://127.0.0.1:1/default")
    relay.config = type(relay.config)(BACKOFF_INITIAL=5, BACKOFF_MAX=5)

    report = relay.run(time_budget=1)
    sentry_sdk.flush()

    assert report.failures == 1
    [error] = sentry_capture.items("event")
    batch = error["contexts"]["event_log_batch"]
    assert batch["rows"] == 7
    assert batch["batch_id"] == error["tags"]["event_log.batch_id"]
    assert (
        "127.0.0.1" in batch["clickhouse_error"] or "refused" in batch["clickhouse_error"].lower()
    )
    assert batch["transient"] is True


def test_sentry_traces_a_relay_run_with_a_span_per_batch_and_its_steps(ch, sentry_capture):
    with transaction.atomic():
        publish(*(Ping(n=i) for i in range(3)))

    run_relay()
    sentry_sdk.flush()

    [trace] = sentry_capture.items("transaction")
    assert trace["transaction"] == "relay run"
    spans = {span["op"]: span for span in trace["spans"]}
    assert {"event_log.batch", "db.clickhouse", "db"} <= set(spans)
    assert spans["event_log.batch"]["data"]["rows"] == 3
    insert = spans["db.clickhouse"]
    assert insert["parent_span_id"] == spans["event_log.batch"]["span_id"]


def test_health_answers_200_with_outbox_depth_and_lag(client):
    with transaction.atomic():
        publish(Ping(n=1))

    response = client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["outbox_depth"] == 1
    assert body["lag_seconds"] >= 0


def test_health_answers_503_when_postgresql_does_not(manage):
    code = (
        "from django.test import Client; r = Client(HTTP_HOST='localhost').get('/health'); "
        "print(r.status_code, r.content.decode())"
    )
    result = manage(
        "shell",
        "-c",
        code,
        env={"DATABASE_URL": f"postgres://postgres@127.0.0.1:{unused_port()}/nowhere"},
    )

    assert result.returncode == 0, result.stderr
    status, body = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert status == "503"
    assert json.loads(body)["database"] == "unreachable"


def _metrics(client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    values = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values


def test_metrics_move_when_events_are_published_and_delivered(client, ch):
    before = _metrics(client)
    with transaction.atomic():
        publish(*(Ping(n=i) for i in range(5)))

    published = _metrics(client)
    assert published["event_log_outbox_depth"] == 5
    assert published["event_log_lag_seconds"] >= 0
    assert (
        published["event_log_events_published_total"]
        == before["event_log_events_published_total"] + 5
    )

    run_relay()

    delivered = _metrics(client)
    assert delivered["event_log_outbox_depth"] == 0
    assert (
        delivered["event_log_events_delivered_total"]
        == before.get("event_log_events_delivered_total", 0) + 5
    )
    assert (
        delivered["event_log_batch_duration_seconds_count"]
        == before["event_log_batch_duration_seconds_count"] + 1
    )
    assert delivered["event_log_dead_letters"] == 0
    assert delivered["event_log_last_delivery_timestamp_seconds"] > time.time() - 60


def test_status_command_prints_every_figure_as_json(ch, capsys):
    with transaction.atomic():
        publish(*(Ping(n=i) for i in range(4)))
    run_relay(max_batches=0)  # nothing delivered yet
    with transaction.atomic():
        publish(Ping(n=9))

    call_command("event_log_status", "--json")
    status = json.loads(capsys.readouterr().out)

    assert status["outbox_depth"] == 5
    assert status["dead_letters"] == 0
    assert status["batches_in_flight"] == 0
    assert status["lag_seconds"] >= 0
    assert status["oldest_event_at"] is not None
    assert status["clickhouse"]["reachable"] is True
    assert status["clickhouse"]["rows"] == 0

    run_relay()
    call_command("event_log_status", "--json")
    status = json.loads(capsys.readouterr().out)
    assert status["outbox_depth"] == 0
    assert status["clickhouse"]["rows"] == 5
    assert status["last_delivered_at"] is not None


def test_stdlib_and_structlog_records_share_one_json_renderer(manage):
    code = (
        "import logging, structlog; "
        "logging.getLogger('django').warning('plain %s', 'stdlib'); "
        "structlog.get_logger('x').warning('thing_happened', email='ada@example.com', n=1)"
    )
    result = manage("shell", "-c", code, env={"LOG_FORMAT": "json"})

    lines = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert {"event": "plain stdlib", "level": "warning", "logger": "django"}.items() <= lines[
        0
    ].items()
    assert lines[1]["event"] == "thing_happened"
    assert lines[1]["email"] == "[redacted]"
    assert "ada@example.com" not in result.stderr


class _FakeSentry(http.server.BaseHTTPRequestHandler):
    """A Sentry ingestion endpoint on loopback that keeps the envelopes it receives."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        elif self.headers.get("Content-Encoding") == "br":  # pragma: no cover - not sent here
            return
        self.received.append(body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        return None


@pytest.mark.slow
def test_beat_relay_runs_are_monitored_as_sentry_crons(ch, process_env, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeSentry)
    _FakeSentry.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {
        **process_env,
        "SENTRY_DSN": f"http://public@127.0.0.1:{server.server_port}/1",
        "SENTRY_TRACES_SAMPLE_RATE": "0",
        "EVENT_LOG_KICK": "false",
        "EVENT_LOG_RELAY_INTERVAL": "0.5",
    }

    def check_ins() -> list[dict]:
        found = []
        for body in list(_FakeSentry.received):
            for line in body.splitlines():
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and "check_in_id" in item:
                    found.append(item)
        return found

    try:
        with (
            running(celery_argv(*WORKER), env=env, log=tmp_path / "worker.log"),
            running(
                celery_argv("beat", "--schedule", str(tmp_path / "beat-schedule")),
                env=env,
                log=tmp_path / "beat.log",
            ),
        ):
            wait_until(
                lambda: any(c.get("status") == "ok" for c in check_ins()),
                timeout=150,
                interval=0.2,
            )
    finally:
        server.shutdown()
        server.server_close()

    slugs = {c["monitor_slug"] for c in check_ins()}
    statuses = {c["status"] for c in check_ins()}
    assert slugs == {"relay-outbox-watchdog"}, "the sub-minute schedule is not a Sentry cron"
    assert {"in_progress", "ok"} <= statuses


def test_a_refused_row_s_personal_data_reaches_no_log_sentry_or_error_column(ch, sentry_capture):
    """ClickHouse quotes refused rows in its messages; only the dead letter keeps the row."""
    event_id = uuid.uuid4()
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO event_log_outbox (event_id, event_type, event_date_time, environment,"
            " event_context, metadata_version) VALUES (%s, 'ping', now(), 'test', %s, 1)",
            [event_id, '{"email": "ada.lovelace@example.com", oops'],
        )
    with transaction.atomic():
        publish(*(Ping(n=i, text="grace.hopper@example.com") for i in range(3)))

    with capture_logs() as logs:
        report = Relay().run()
    sentry_sdk.flush()

    assert report.dead_lettered == 1
    dead = DeadLetter.objects.get()
    assert dead.event_id == event_id
    assert "ada.lovelace@example.com" in dead.event_context, "the row itself is kept"
    assert dead.error.startswith("Code: 469 (VIOLATED_CONSTRAINT)")
    outside = json.dumps(
        [dead.error, logs, sentry_capture.items("event"), report.errors], default=str
    )
    assert "event_context" in outside, "the column is named"
    for value in ("ada.lovelace", "grace.hopper"):
        assert value not in outside
