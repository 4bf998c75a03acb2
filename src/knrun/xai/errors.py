"""xAI's errors, one class per thing the caller must do differently, decided by the message first
and the status second: xAI has sent "out of credit" as 402, 403 and 429, and some bodies are
plain text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from knrun.errors import ExitCode, KnrunError
from knrun.http import json_body, parse_retry_after, redact, text_excerpt


class XaiError(KnrunError):
    """A failed xAI call. `status` is the HTTP status, when there was a response."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LimitClaim:
    """What a 429's text says about the limit it hit: "Requests per Second (actual/limit):
    31/30." is requests, 1 s, 31, 30. A claim, not a fact: some 429s are not about this run."""

    kind: str  # requests | tokens
    window_s: float
    actual: float
    limit: float

    @property
    def per_s(self) -> float:
        return self.limit / self.window_s


class RateLimited(XaiError):
    """Slow down. `window` is "second" or "minute" when the message names one; `claim` is the
    limit the message names, when it names one."""

    def __init__(
        self,
        message: str,
        status: int | None,
        retry_after: float | None,
        window: str | None,
        claim: LimitClaim | None = None,
    ) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after
        self.window = window
        self.claim = claim


class CreditExhausted(XaiError):
    """Out of prepaid credit, over the monthly spending limit, or no credit or licence at all
    (402, or xAI's own words for it): stop the run at once."""

    exit_code = ExitCode.BREAKER


class AuthFailed(XaiError):
    exit_code = ExitCode.USAGE


class ModelUnavailable(XaiError):
    """The model does not exist (retired) or this team cannot use it."""

    exit_code = ExitCode.USAGE


class PromptTooLong(XaiError):
    pass


class BadRequest(XaiError):
    pass


class BatchRefused(ModelUnavailable):
    """The Batch API does not take this model ("Model X is not supported for batch
    processing."): run it live, or pick a model the Batch API takes."""


class DuplicateBatchRequest(BadRequest):
    """412: a batch already holds a request with this id and different content."""


class NotSent(XaiError):
    """The request provably never reached xAI (no connection, or the body was not fully sent):
    nothing can have been billed, so sending it again is safe."""


class ServerError(XaiError):
    """A 5xx answered quickly: the request was refused before any work, so it is retried."""


class PossiblyBilled(XaiError):
    """The request reached xAI and no usable reply came back: xAI bills every request it
    computes, even one the client gave up on, so it may have been billed. Never resent blindly;
    counted at its worst case."""


class Timeout(PossiblyBilled):
    pass


class Dropped(PossiblyBilled):
    """The connection failed after the request was sent, or a slow 5xx came back."""


class BadResponse(PossiblyBilled):
    """A 2xx reply knrun cannot read (no usage): billed, by an amount nobody told us."""


# Chat requests are retried only when they provably cost nothing.
RETRYABLE_CHAT = (NotSent, ServerError)
# Reads (model list, balance, api-key) cost nothing: any passing trouble is worth retrying.
RETRYABLE_READ = (NotSent, ServerError, Timeout, Dropped)
# A 5xx slower than this may have come after the model did the work.
FAST_5XX_S = 10.0

# "Out of credit" as xAI words it (design section 6): 403 since mid-2026, 429 before. Only these
# phrases, never a word such as "credit" or "billing" anywhere in a message: a schema property
# called `credit_points` must not stop a run as if the account were empty.
_CREDIT = (
    "used all available credits",
    "reached its monthly spending limit",
    "doesn't have any credits or licenses",
    "does not have any credits or licenses",
)
_AUTH = (
    "incorrect api key",
    "invalid api key",
    "api key is blocked",
    "api key is disabled",
    "team is blocked",
    "no api key",
)
_MODEL = ("does not exist", "model not found")
_TOO_LONG = ("maximum prompt length", "input_too_large", "prompt is too long")
_RATE = ("too many requests", "too many tokens", "rate limit", "at capacity")
_WINDOW = re.compile(r"per (second|minute)", re.IGNORECASE)
_CLAIM = re.compile(
    r"(requests|tokens) per (second|minute) \(actual/limit\):\s*([\d.]+)\s*/\s*([\d.]+)",
    re.IGNORECASE,
)


def limit_claim(message: str) -> LimitClaim | None:
    found = _CLAIM.search(message)
    if found is None:
        return None
    kind, window, actual, limit = found.groups()
    try:
        claim = LimitClaim(
            kind.lower(), 1.0 if window.lower() == "second" else 60.0, float(actual), float(limit)
        )
    except ValueError:
        return None
    return claim if claim.limit > 0 else None


def classify(
    response: httpx.Response, *, secrets: Sequence[str] = (), elapsed_s: float = 0.0
) -> XaiError:
    """The error class for a failed response, JSON or not (proxies send HTML pages, and xAI
    answers some 400s and 422s in plain text)."""
    status = response.status_code
    body = json_body(response)
    message = ""
    if isinstance(body, dict):
        detail = body.get("error") or body.get("message") or body.get("code")
        if isinstance(detail, dict):  # OpenAI-style {"error": {"message": ...}} from a proxy
            detail = detail.get("message")
        message = str(detail or "")
    message = redact(message or text_excerpt(response) or response.reason_phrase, secrets)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return classify_message(message, status, retry_after=retry_after, elapsed_s=elapsed_s)


def classify_message(
    message: str,
    status: int | None,
    *,
    retry_after: float | None = None,
    elapsed_s: float = 0.0,
) -> XaiError:
    """The error class for xAI's words, by the message first and the status second; `status`
    None for an error with no HTTP status (a failed request inside a batch)."""
    text = f"xAI HTTP {status}: {message}" if status is not None else f"xAI: {message}"
    lowered = message.lower()
    if status == 402 or any(phrase in lowered for phrase in _CREDIT):
        return CreditExhausted(text, status)
    if any(fragment in lowered for fragment in _AUTH) or status == 401:
        return AuthFailed(text, status)
    if "not supported for batch" in lowered:
        return BatchRefused(text, status)
    if status == 412:
        return DuplicateBatchRequest(text, status)
    if any(fragment in lowered for fragment in _MODEL):
        return ModelUnavailable(text, status)
    if any(fragment in lowered for fragment in _TOO_LONG):
        return PromptTooLong(text, status)
    if status == 429 or any(fragment in lowered for fragment in _RATE):
        window = _WINDOW.search(message)
        return RateLimited(
            text, status, retry_after, window[1].lower() if window else None, limit_claim(message)
        )
    if status == 403:
        return AuthFailed(text, status)  # blocked team or key, or a missing permission
    if status == 404:
        return ModelUnavailable(text, status) if "model" in lowered else BadRequest(text, status)
    if status == 408:
        return Timeout(text, status)
    if status is not None and status >= 500:
        if elapsed_s > FAST_5XX_S:
            return Dropped(f"{text} (after {elapsed_s:.0f} s: it may have been billed)", status)
        return ServerError(text, status)
    return BadRequest(text, status)


class UnreadableReply(XaiError):
    """A read-only endpoint answered something knrun cannot use (nothing was billed)."""
