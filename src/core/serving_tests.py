"""The production web server (gunicorn with the image's configuration) keeps serving
while slow clients hold connections open, and the image and Compose run it so."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SLOW_CLIENTS = 8  # four times the threads the server gets below


def _stall(port: int, stop: threading.Event) -> None:
    """Half a request, then silence."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /api/users HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        stop.wait(30)


def _trickle(port: int, stop: threading.Event) -> None:
    """A header a byte at a time, each byte well inside the read timeout, for at
    most 30 s (until the server hangs up)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        for _ in range(60):
            if stop.wait(0.5):
                return
            try:
                sock.sendall(b"a")
            except OSError:
                return


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("slow_client", [_stall, _trickle])
def test_slow_clients_do_not_stall_the_production_server(web_server, slow_client):
    stop = threading.Event()
    env = {"GUNICORN_READ_TIMEOUT": "1", "GUNICORN_READ_DEADLINE": "3"}
    with web_server(workers=1, threads=2, **env) as url:
        port = int(url.rsplit(":", 1)[1])
        clients = [
            threading.Thread(target=slow_client, args=(port, stop)) for _ in range(SLOW_CLIENTS)
        ]
        for client in clients:
            client.start()
        time.sleep(0.5)  # let every slow client take its connection first
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=20) as response:
                status = response.status
        finally:
            stop.set()
            for client in clients:
                client.join()

    assert status == 200


def test_the_image_and_compose_run_gunicorn_with_the_production_configuration():
    dockerfile = (ROOT / "Dockerfile").read_text()
    compose = (ROOT / "docker-compose.yml").read_text()

    assert re.search(r'^CMD \["gunicorn", "-c", "docker/gunicorn.conf.py"', dockerfile, re.M)
    assert '"gunicorn", "-c", "docker/gunicorn.conf.py"' in compose
    assert (
        'worker_class = "core.gunicorn_worker.SlowClientSafeWorker"'
        in (ROOT / "docker" / "gunicorn.conf.py").read_text()
    )
