"""Reading the environment: the only place settings come from (12-factor).

Every accessor raises ``ImproperlyConfigured`` with a one-line message that
names the variable, so start-up fails with a message an operator can act on.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from core.dsn import mask_url, userinfo_needs_encoding

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = Path(__file__).resolve().parent / ".env"


def env_file() -> Path | None:
    """The settings file every process reads: one rule for manage.py, Celery, gunicorn.

    ``ENV_FILE`` unset: ``src/core/.env`` when it exists (``make`` creates it from
    ``src/core/.env.ci`` on first use), else no file — a container gets its settings
    from real variables and must never pick up the development defaults by accident.
    ``ENV_FILE`` set: that file, a relative path meaning relative to the repository
    root (so every working directory agrees); a file that does not exist is an error
    naming it. ``ENV_FILE`` set but empty: no file.
    """
    raw = os.environ.get("ENV_FILE")
    if raw is None:
        return ENV_FILE if ENV_FILE.is_file() else None
    if not raw.strip():
        return None
    path = Path(raw.strip()).expanduser()
    if not path.is_absolute():
        path = (REPO_ROOT / path).resolve()
    if not path.is_file():
        raise ImproperlyConfigured(f"ENV_FILE names {raw.strip()!r}, but {path} is not a file")
    return path


def load_env_file() -> None:
    """Load the settings file (see :func:`env_file`) without overriding real variables."""
    path = env_file()
    if path is not None:
        environ.Env.read_env(str(path), overwrite=False)


def exit_on_configuration_error(exc: Exception, *, code: int = 1) -> NoReturn:
    """End the process with the one line an operator acts on, no traceback.

    Every entry point (manage.py, Celery worker and Beat, gunicorn) reports a
    configuration error the same way; ``code`` lets a host that reads exit codes
    (gunicorn halts on 4 instead of restarting the worker forever) see it.
    """
    print(f"configuration error: {exc}", file=sys.stderr, flush=True)
    sys.exit(code)


def required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(f"{name} is not set (see src/core/.env.ci for an example)")
    return value


def url(name: str, *, schemes: tuple[str, ...], default: str | None = None) -> str:
    """A URL whose scheme is one of ``schemes``; missing or malformed is an error."""
    value = os.environ.get(name, "").strip() or default
    if not value:
        raise ImproperlyConfigured(f"{name} is not set (see src/core/.env.ci for an example)")
    if userinfo_needs_encoding(value):
        raise ImproperlyConfigured(
            f"{name} is malformed: {mask_url(value)} has '#', '/', '?', '[' or ']' in its user "
            "or password; percent-encode them (# is %23, / is %2F, ? is %3F, [ is %5B, ] is %5D)"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is malformed: {mask_url(value)}: {exc}") from None
    scheme = parts.scheme
    if scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name} is malformed: scheme {scheme or '(none)'!r} is not one of {', '.join(schemes)}"
        )
    return value


def boolean(name: str, *, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} is malformed: {raw!r} is not a boolean (true/false)")


def integer(name: str, *, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} is malformed: {raw!r} is not an integer") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} is malformed: {value} is below {minimum}")
    return value


def number(name: str, *, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} is malformed: {raw!r} is not a number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} is malformed: {value} is below {minimum}")
    return value


def string_list(name: str, *, default: list[str]) -> list[str]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def networks(name: str, *, default: list[str]) -> list[str]:
    """A comma-separated list of CIDR networks (``10.0.0.0/8,::1/128``); each is checked."""
    values = string_list(name, default=default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} is malformed: {value!r} is not a network like 10.0.0.0/8"
            ) from None
    return values


def choice(name: str, *, choices: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, "").strip() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} is malformed: {value!r} is not one of {choices}")
    return value


def clickhouse_url(name: str, *, default: str | None = None) -> str:
    """``CLICKHOUSE_URL``: ``http(s)://…`` for a server or ``chdb:`` for the embedded engine.

    Without ``default`` the variable is required; with one, an unset variable gives it.

    A server URL needs a host; a port, when given, is a number from 1 to 65535; the
    path names at most one database. An embedded URL needs a data folder: without one
    (``chdb:``, ``chdb://``, ``chdb::memory:``) the engine would keep everything in
    memory and forget the schema and every delivered event when the process ends, so
    it is refused. A relative folder (``chdb:var/clickhouse``) is resolved against the
    repository root so it means the same folder whatever the working directory.
    """
    if default is not None and not optional(name):
        return default
    value = url(name, schemes=("http", "https", "chdb"))
    if value.startswith("chdb:"):
        return _embedded_clickhouse_url(name, value)
    parts = urlsplit(value)
    if not parts.hostname:
        raise ImproperlyConfigured(f"{name} is malformed: it names no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ImproperlyConfigured(
            f"{name} is malformed: the port in {parts.netloc.rpartition('@')[2]!r} "
            "is not a number from 1 to 65535"
        )
    if parts.path.strip("/").count("/"):
        raise ImproperlyConfigured(
            f"{name} is malformed: the path {parts.path!r} must name one database (/default)"
        )
    return value


def _embedded_clickhouse_url(name: str, value: str) -> str:
    rest = value.removeprefix("chdb:").removeprefix("//")
    path, _, query = rest.partition("?")
    if not path.strip("/ ") or path.startswith((":memory:", "memory")):
        raise ImproperlyConfigured(
            f"{name} is malformed: {value!r} names no data folder (an in-memory engine "
            "would forget the schema and the events); use chdb:var/clickhouse or chdb:///abs/path"
        )
    # An absolute folder is kept as written; a relative one is anchored at the repository.
    folder = path if path.startswith("/") else str((REPO_ROOT / path).resolve())
    return f"chdb://{folder}" + (f"?{query}" if query else "")


_RATE = re.compile(r"^\d+/(s|sec|m|min|h|hour|d|day)$")


def rate(name: str, *, default: str) -> str:
    value = os.environ.get(name, "").strip() or default
    if not _RATE.match(value):
        raise ImproperlyConfigured(
            f"{name} is malformed: {value!r} is not a rate like 60/min or 5/s"
        )
    return value


def optional(name: str, *, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default
