"""Passwords out of URLs before they are printed, logged or quoted in an error.

Masking works on the text, not on a parsed URL: a password holding ``#``, ``/``,
``?``, ``[`` or ``@`` unencoded makes ``urllib.parse`` split the URL in the wrong
place (the rest of the password lands in the path or the fragment, where it was
printed) or raise (``[`` reads as an IPv6 host). Here everything between ``user:``
and the last ``@`` of the URL is the password, and ``password=``-style query
parameters are masked too. A URL with an ``@`` in its path loses more than its
password to the mask, never less.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@rest — the password runs to the last "@" of the
# whitespace-free token (greedy), so an unencoded "@", "#", "/" or "[" stays inside it.
# The user part holds none of ":/?#@[]", so "host:port/path" is never read as one.
_USERINFO = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/?#@\[\]\s]*:)(?P<password>\S*)@(?P<rest>[^@\s]*)",
    re.IGNORECASE,
)
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|pass|secret|token|access_token|api_key)=)[^&;#\s]*",
    re.IGNORECASE,
)


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it, and every ``password=``-style
    query parameter, replaced by ``***``."""
    masked = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@{m['rest']}", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", masked)


def mask_url(url: str) -> str:
    """One URL, safe to print: its password and secret query parameters masked.
    Never raises, whatever the URL holds."""
    return mask_secrets(url)


def userinfo_needs_encoding(url: str) -> bool:
    """Whether the user or password of ``url`` holds a character that splits a URL
    (``# / ? [ ]``) unencoded, so it would be read as something else."""
    match = _USERINFO.search(url)
    if match is None or not url.startswith(match["head"]):
        return False
    return any(char in match["password"] for char in "#/?[]")


__all__ = ["MASK", "mask_secrets", "mask_url", "userinfo_needs_encoding"]
