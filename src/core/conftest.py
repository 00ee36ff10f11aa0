"""The production web server, started as the image starts it, for tests that need
real sockets: concurrency and slow clients."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from conftest import SRC, running, unused_port, wait_until

GUNICORN_CONF = SRC.parent / "docker" / "gunicorn.conf.py"

WebServer = Callable[..., AbstractContextManager[str]]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture
def web_server(process_env: dict[str, str], tmp_path: Path) -> WebServer:
    """``with web_server(workers=1, threads=2, **env) as url:`` runs gunicorn with
    the image's configuration (docker/gunicorn.conf.py) on a free 127.0.0.1 port."""

    @contextmanager
    def serve(*, workers: int = 2, threads: int = 8, **env: str) -> Iterator[str]:
        port = unused_port()
        argv = [
            sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF),
            "--chdir", str(SRC), "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--threads", str(threads),
            "core.wsgi:application",
        ]  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        with running(argv, env={**process_env, **env}, log=tmp_path / f"gunicorn-{port}.log"):
            wait_until(lambda: _answers(url), timeout=60, interval=0.2)
            yield url

    return serve
