"""`D1Store`: units in Cloudflare D1, over the REST API (`/query`, single and `batch` forms).

Every request goes through one `RequestLimiter`. Errors are classified by message first, status
second: bad SQL and auth are final; rate limits, overload and Cloudflare's documented transient
messages are retried, but only for idempotent requests.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr
from tenacity import RetryCallState, wait_random_exponential

from knrun.errors import ExitCode, StoreError, StoreUnusable
from knrun.http import Failure, failure_of, json_body, parse_retry_after, text_excerpt, with_retries
from knrun.job import JobSpec
from knrun.store.base import Result, SqlUnitStore
from knrun.store.limiter import RequestLimiter
from knrun.store.schema import Statement

# Cloudflare's account-wide API limit blocks every call for five minutes once exceeded.
API_BLOCK_S = 300.0
# Cloudflare's D1 "retry queries" guidance: these messages mean "try again".
TRANSIENT_MESSAGES = (
    "network connection lost",
    "storage caused object to be reset",
    "reset because its code was updated",
    "transient issue on remote node",
    "client disconnected",
)
OVERLOAD_MESSAGES = (
    "is overloaded",
    "exceeded timeout",
    "exceeded its memory limit",
    "exceeded its cpu time limit",
)
FULL_MESSAGES = ("exceeded maximum db size", "exceeded maximum account storage")
DAILY_LIMIT = re.compile(r"exceeded daily row (read|write) limit", re.IGNORECASE)
RATE_LIMIT_CODES = {971, 10429}
# Full-jitter exponential backoff between retries of transient failures: 0-0.5 s, 0-1 s, ... 30 s.
_BACKOFF = wait_random_exponential(multiplier=0.5, max=30)
AUTH_CODES = {10000, 9106, 9109}


class D1Error(StoreError):
    retryable = False  # the classes below that may pass say so


class D1QueryError(D1Error):
    """Bad SQL or a constraint: repeating it cannot help."""


class D1Unusable(D1Error, StoreUnusable):
    """D1 refuses every request, whatever it holds."""


class D1AuthError(D1Unusable):
    exit_code = ExitCode.USAGE


class D1NotFound(D1Unusable):
    exit_code = ExitCode.USAGE


class D1StorageFull(D1Unusable):
    pass


class D1DailyLimit(D1Unusable):
    """The Workers Free plan's daily rows read or written: nothing works until 00:00 UTC."""


class D1Transient(D1Error):
    retryable = True


class D1Overloaded(D1Error):
    retryable = True


class D1RateLimited(D1Error):
    retryable = True

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def classify_error(response: httpx.Response) -> D1Error:
    """Map a failed D1 response (JSON envelope or not) to an error class."""
    status = response.status_code
    body = json_body(response)
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        codes = {e.get("code") for e in errors if isinstance(e, dict)}
        message = "; ".join(
            str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors
        )
    else:
        codes, message = set(), text_excerpt(response) or response.reason_phrase
    text = f"D1 HTTP {status}: {message}"
    lowered = message.lower()
    if DAILY_LIMIT.search(message):
        return D1DailyLimit(f"{text} ({_until_reset()})")
    if any(fragment in lowered for fragment in FULL_MESSAGES):
        return D1StorageFull(
            f"{text} (the database is at its size limit: delete data or move to a larger plan)"
        )
    if any(fragment in lowered for fragment in TRANSIENT_MESSAGES):
        return D1Transient(text)
    if any(fragment in lowered for fragment in OVERLOAD_MESSAGES):
        return D1Overloaded(text)
    if status == 429 or codes & RATE_LIMIT_CODES or "throttling your request" in lowered:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return D1RateLimited(text, retry_after)
    if status in (401, 403) or codes & AUTH_CODES:
        return D1AuthError(f"{text} (check CLOUDFLARE_API_TOKEN: it needs D1 Edit on this account)")
    if status == 404:
        return D1NotFound(f"{text} (check CLOUDFLARE_ACCOUNT_ID and D1_DATABASE_ID)")
    if status >= 500:
        return D1Transient(text)
    return D1QueryError(text)


def _until_reset(now: datetime | None = None) -> str:
    """When the free plan's daily limits reset (00:00 UTC), from now."""
    now = now or datetime.now(UTC)
    reset = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    hours, rest = divmod(int((reset - now).total_seconds()), 3600)
    return (
        f"D1's daily row limit is used up; it resets at 00:00 UTC, in {hours} h {rest // 60} min: "
        "run again then, or move the account to Workers Paid"
    )


class D1Store(SqlUnitStore):
    # Well under D1's 1 MB-class request sizes until measured otherwise (design section 5).
    request_budget_bytes = 512_000

    def __init__(
        self,
        job: JobSpec,
        *,
        account_id: str,
        database_id: str,
        api_token: SecretStr,
        base_url: str = "https://api.cloudflare.com/client/v4",
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: RequestLimiter | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timeout_s: float = 30.0,
        max_attempts: int = 5,
        max_retry_s: float = 900.0,
    ) -> None:
        super().__init__(job, clock=clock)
        self._url = f"{base_url.rstrip('/')}/accounts/{account_id}/d1/database/{database_id}/query"
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            headers={"Authorization": f"Bearer {api_token.get_secret_value()}"},
        )
        self.limiter = limiter or RequestLimiter(3.0, sleep=sleep)
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._max_retry_s = max_retry_s
        self.requests_sent = 0

    def describe(self) -> str:
        return "d1"

    def share_budget(self, runners: int) -> None:
        self.limiter.share(runners)

    async def _execute(self, statements: Sequence[Statement], *, idempotent: bool) -> list[Result]:
        payload = [{"sql": s.sql, "params": list(s.params)} for s in statements]
        body: dict[str, Any] = payload[0] if len(payload) == 1 else {"batch": payload}
        return await with_retries(
            lambda: self._send(body, expected=len(payload)),
            retry_if=lambda exc: idempotent and getattr(exc, "retryable", False),
            attempts=self._max_attempts,
            max_s=self._max_retry_s,
            sleep=self._sleep,
            wait=self._wait,
        )

    async def _send(self, body: dict[str, Any], *, expected: int) -> list[Result]:
        await self.limiter.acquire()
        self.requests_sent += 1
        try:
            response = await self._client.post(self._url, content=_dumps(body))
        except httpx.HTTPError as exc:
            if failure_of(exc) is Failure.BAD_URL:
                raise D1NotFound(f"CLOUDFLARE_API_BASE_URL is not a URL: {exc}") from None
            # Sent or not, a request marked idempotent may be repeated; the others are not.
            raise D1Transient(
                f"D1 request failed: {failure_of(exc).value} ({type(exc).__name__})"
            ) from None
        self.limiter.observe(
            response.headers.get("ratelimit"), response.headers.get("ratelimit-policy")
        )
        envelope = json_body(response)
        if response.is_success and isinstance(envelope, dict) and envelope.get("success"):
            return _rows(envelope, expected)
        error = classify_error(response)
        if isinstance(error, D1RateLimited):
            self.limiter.pause_for(
                error.retry_after if error.retry_after is not None else API_BLOCK_S
            )
        raise error

    @staticmethod
    def _wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, D1RateLimited):
            return 0.0  # the limiter already parks every request until the block ends
        return float(_BACKOFF(state))

    async def close(self) -> None:
        await self._client.aclose()


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _rows(envelope: dict[str, Any], expected: int) -> list[Result]:
    results = envelope.get("result")
    if not isinstance(results, list) or len(results) != expected:
        raise D1Transient(f"D1 returned {len(results or [])} results for {expected} statements")
    rows: list[Result] = []
    for item in results:
        if not isinstance(item, dict):
            raise D1Transient(f"D1 returned an unreadable result: {str(item)[:100]}")
        if not item.get("success", True):
            raise D1QueryError(f"D1 statement failed: {item.get('error') or item}")
        meta = item.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        rows.append(Result(list(item.get("results") or []), int(meta.get("changes") or 0)))
    return rows
