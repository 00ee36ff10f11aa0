"""Where the service's network dependencies are, as the settings resolved them.

``scripts/ensure-services.sh`` (``make services``) checks exactly these, so it
tests the URLs the service will use, not a separate set of variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from core.dsn import mask_url

DEFAULT_PORTS = {
    "postgres": 5432,
    "postgresql": 5432,
    "pgsql": 5432,
    "redis": 6379,
    "rediss": 6379,
    "amqp": 5672,
    "amqps": 5671,
}


@dataclass(frozen=True)
class Endpoint:
    variable: str  # the setting that names it, e.g. CELERY_BROKER_URL
    host: str  # empty for a Unix socket or an in-process transport
    port: int
    url: str  # with any password masked, safe to print

    @property
    def checkable(self) -> bool:
        """False for what has no TCP address (a Unix socket, Celery's memory://)."""
        return bool(self.host) and not self.host.startswith("/")


def service_endpoints() -> list[Endpoint]:
    """DATABASE_URL, REDIS_URL and CELERY_BROKER_URL, in that order."""
    return [
        _endpoint(name, str(getattr(settings, name)))
        for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    ]


def _endpoint(variable: str, url: str) -> Endpoint:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    return Endpoint(variable=variable, host=host, port=port, url=mask_url(url))
