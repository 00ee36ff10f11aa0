from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from core.endpoints import service_endpoints


class Command(BaseCommand):
    help = (
        "Print the PostgreSQL, Redis and broker endpoints the service will use, one per "
        "line: variable, host, port, URL (password masked). For scripts/ensure-services.sh."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        for endpoint in service_endpoints():
            if endpoint.checkable:
                self.stdout.write(
                    f"{endpoint.variable}\t{endpoint.host}\t{endpoint.port}\t{endpoint.url}"
                )
