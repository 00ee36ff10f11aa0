"""Reading the environment: the only place settings come from (12-factor).

Every accessor raises ``ImproperlyConfigured`` with a one-line message that
names the variable, so start-up fails with a message an operator can act on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = Path(__file__).resolve().parent / ".env"


def load_env_file() -> None:
    """Load ``ENV_FILE`` (default ``src/core/.env``) without overriding real variables."""
    path = Path(os.environ.get("ENV_FILE", ENV_FILE))
    if path.is_file():
        environ.Env.read_env(str(path), overwrite=False)


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
    scheme = urlsplit(value).scheme
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


def choice(name: str, *, choices: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, "").strip() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} is malformed: {value!r} is not one of {choices}")
    return value


def clickhouse_url(name: str) -> str:
    """``CLICKHOUSE_URL``: ``http(s)://…`` for a server or ``chdb:`` for the embedded engine.

    A relative embedded path (``chdb:var/clickhouse``) is resolved against the
    repository root so it means the same folder whatever the working directory.
    """
    value = url(name, schemes=("http", "https", "chdb"))
    if value.startswith("chdb:") and not value.startswith("chdb:///"):
        rest = value.removeprefix("chdb:").removeprefix("//")
        path, _, query = rest.partition("?")
        if not path or path.startswith("memory"):
            return value
        value = f"chdb://{(REPO_ROOT / path).resolve()}" + (f"?{query}" if query else "")
    return value


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
