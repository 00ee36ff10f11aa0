"""What an edit of a dead letter's context changed, told without the values.

The dead letter's context may hold personal data; the audit trail (the admin's log
entries, the log lines) says who changed it, when, which event, which fields, and a
digest of the text before and after, which proves what was replayed without
repeating it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


def digest(text: str) -> str:
    """``sha256:`` and the first 16 hex digits of the text's SHA-256."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class ContextChange:
    fields: list[str]  # top-level keys added, removed or changed; ["(whole)"] if not objects
    before: str
    after: str

    def as_dict(self) -> dict[str, Any]:
        return {"fields": self.fields, "before": self.before, "after": self.after}


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def context_change(before: str, after: str) -> ContextChange:
    """The names of the top-level fields that differ, and both texts' digests."""
    old, new = _object(before), _object(after)
    if old is None or new is None:
        fields = [] if before == after else ["(whole)"]
    else:
        fields = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    return ContextChange(fields=fields, before=digest(before), after=digest(after))
