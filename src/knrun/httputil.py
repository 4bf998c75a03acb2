"""Small HTTP helpers shared by the xAI and D1 clients: Retry-After, and error text safe to show."""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

MAX_RETRY_AFTER_S = 600.0  # never trust a header to park the run for longer than this
_WHITESPACE = re.compile(r"\s+")
_TAGS = re.compile(r"<[^>]+>")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if _looks_like_date(value) else None
        if parsed is None:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = (parsed - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _looks_like_date(value: str) -> bool:
    try:
        return email.utils.parsedate_tz(value) is not None
    except (TypeError, ValueError):
        return False


def json_body(response: httpx.Response) -> Any:
    """The response's JSON, or None when it is not JSON (an HTML error page from a proxy)."""
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def text_excerpt(response: httpx.Response, limit: int = 200) -> str:
    """A one-line excerpt of a non-JSON body, tags stripped, for error messages."""
    text = response.content[:4000].decode("utf-8", errors="replace")
    return _WHITESPACE.sub(" ", _TAGS.sub(" ", text)).strip()[:limit]


_KEY_LIKE = re.compile(r"\b(xai-[A-Za-z0-9_-]{6,}|Bearer\s+\S+)")


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove known secrets and anything shaped like an xAI key or a bearer token."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)
