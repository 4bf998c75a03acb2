"""The HTTP policy the xAI and D1 clients share: what a failed exchange says about whether the
request was sent, one bounded retry loop, Retry-After, and error text safe to show."""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class Failure(Enum):
    """What a transport error says about the request. Only NOT_SENT proves the server never
    saw it; after a TIMEOUT or a DROPPED connection it may have done the work (and billed)."""

    NOT_SENT = "not sent"  # no connection, or the body never fully left
    TIMEOUT = "timeout"  # sent, and no reply in time
    DROPPED = "dropped"  # sent, then the connection failed
    BAD_URL = "bad url"  # a configuration mistake, not a network one
    UNDECODABLE = "undecodable"  # a reply came, and could not be read
    OTHER = "other"  # too many redirects, and the like


def failure_of(exc: httpx.HTTPError) -> Failure:
    if isinstance(exc, httpx.InvalidURL):
        return Failure.BAD_URL
    not_sent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
    if isinstance(exc, (*not_sent, httpx.WriteError, httpx.WriteTimeout)):
        return Failure.NOT_SENT
    if isinstance(exc, httpx.TimeoutException):
        return Failure.TIMEOUT
    if isinstance(exc, httpx.TransportError):
        return Failure.DROPPED
    if isinstance(exc, httpx.DecodingError):
        return Failure.UNDECODABLE
    return Failure.OTHER


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    retry_if: Callable[[BaseException], bool],
    attempts: int,
    max_s: float,
    sleep: Sleep,
    wait: Callable[[RetryCallState], float] | None = None,
) -> T:
    """`call` until it succeeds, or fails for a reason `retry_if` refuses, or `attempts` tries
    or `max_s` seconds are used up: full-jitter exponential backoff between tries (or `wait`).
    Nearly every call succeeds first time, so the retry machinery is built only after a failure."""
    try:
        return await call()
    except Exception as exc:
        if attempts <= 1 or not retry_if(exc):
            raise
        first = exc
    waiting = wait or BACKOFF
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts - 1) | stop_after_delay(max_s),
        wait=waiting,
        retry=retry_if_exception(retry_if),
        sleep=sleep,
        reraise=True,
    )
    await sleep(float(waiting(_first_state(retrying, first))))
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


# Full-jitter exponential backoff: 0-1 s, 0-2 s, 0-4 s ... at most 20 s between tries.
BACKOFF = wait_random_exponential(multiplier=1, max=20)


def _first_state(retrying: AsyncRetrying, exc: BaseException) -> RetryCallState:
    """A retry state for the failure that came before the retry loop, to size the first wait."""
    state = RetryCallState(retrying, fn=None, args=(), kwargs={})
    state.set_exception((type(exc), exc, exc.__traceback__))
    return state


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
