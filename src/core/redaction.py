"""What may leave the process: one redaction for logs, Sentry and error pages.

Personal data belongs in the audited event log, behind its retention and erasure,
not in application logs or an error tracker that keep it elsewhere and longer;
passwords inside URLs belong nowhere. :func:`redact` walks any JSON-like value
(dicts, lists, tuples, strings) and returns a copy where

- the value of a key in :data:`REDACTED_KEYS` (any case) is ``[redacted]``;
- a password inside a URL (``scheme://user:password@host``) is ``***``;
- an e-mail address anywhere in free text is ``[email]``.

Other values (numbers, None, objects) are returned as they are.
"""

from __future__ import annotations

import re
from typing import Any

# Keys whose values never leave the process (personal data and secrets).
REDACTED_KEYS = frozenset(
    {
        "email",
        "first_name",
        "last_name",
        "password",
        "secret_key",
        "dsn",
        "authorization",
        "cookie",
        "event_context",
    }
)
REDACTED = "[redacted]"
EMAIL_REDACTED = "[email]"

URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
# Dotted domain required: "user@host" alone is too often not an address (log formats,
# git remotes); "*" is left out of the local part so a masked URL stays a URL.
EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)


def redact_text(text: str) -> str:
    """``text`` with URL passwords masked and e-mail addresses replaced."""
    if "@" not in text:
        return text
    return EMAIL.sub(EMAIL_REDACTED, URL_PASSWORD.sub(r"\1***@", text))


def redact(value: Any, *, key: str | None = None) -> Any:
    """A redacted copy of ``value`` (see the module docstring); ``key`` is the name
    the value was found under, if any."""
    if key is not None and key.lower() in REDACTED_KEYS and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v, key=k if isinstance(k, str) else None) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    return value
