"""Every login, failed or not, as a log line with the trusted client address.

django-axes keeps the durable record (AccessAttempt, AccessFailureLog, AccessLog in the
admin); these lines put the same facts where the rest of the audit trail is read. The
password is never logged, and the username only as typed for a failure (no lookup).
"""

from __future__ import annotations

from typing import Any

import structlog
from django.http import HttpRequest

from core.client_address import client_address

logger = structlog.get_logger(__name__)


def login_succeeded(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    logger.info(
        "admin_login_succeeded",
        user_id=user.pk,
        ip=client_address(request) if request is not None else None,
    )


def login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    logger.warning(
        "admin_login_failed",
        username=str(credentials.get("username", ""))[:254],
        ip=client_address(request) if request is not None else None,
    )
