"""xAI's Batch API over REST: create a batch, add requests, read its counters, page its results
and its request list, cancel it. Shapes from xAI's REST reference and batch proto (xai-org/
xai-proto), read defensively: the sources disagree on how a failed result looks, and the proto
says the counters are "not always populated" and the results' order "is not guaranteed".

Requests in a batch are billed as xAI processes them, at the model's batch price; they do not
count against the chat rate limits, and most finish "typically within 24 hours". The Batch API's
own calls are rate-limited: a 429 (and, on reads, any passing trouble) is waited out here with
backoff, counted, and given up only after `max_wait_s`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from knrun.xai.client import XaiClient
from knrun.xai.errors import (
    BadResponse,
    NotSent,
    PossiblyBilled,
    RateLimited,
    ServerError,
    UnreadableReply,
    XaiError,
)
from knrun.xai.models import ChatReply, parse_chat

PAGE = 1000  # results or request ids per page read: the REST reference's maximum
BACKOFF_MAX_S = 60.0
MAX_WAIT_S = 1800.0  # of 429s and outages in a row on one call before giving up
CANCELLED_CODE = 1  # gRPC's CANCELLED, as a failed result's code
# Per-request states of the request list (REST: lower case, the proto's State without STATE_).
PENDING, SUCCEEDED, FAILED, CANCELLED = "pending", "succeeded", "failed", "cancelled"


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    name: str
    counted: bool = True  # False: the reply left out `state` (the counters are unknown)
    num_requests: int = 0
    num_pending: int = 0
    num_success: int = 0
    num_error: int = 0
    num_cancelled: int = 0
    total_cost_ticks: int | None = None  # cost_breakdown.total_cost_usd_ticks, when sent
    cancelled_by_xai: str | None = None  # cancel_by_xai_message: xAI's own words
    cancelled: bool = False  # cancel_time is set (the cancel may not have spread yet)

    @property
    def finished(self) -> int:
        return self.num_success + self.num_error + self.num_cancelled

    @property
    def done(self) -> bool:
        """Nothing pending, as far as these counters know (they may lag the truth, and say
        nothing when they were left out)."""
        return self.counted and self.num_pending == 0


@dataclass(frozen=True)
class BatchResult:
    request_id: str
    reply: ChatReply | None  # the chat reply, or None with `error`
    error: str | None = None
    unreadable: bool = False  # a reply came, but not one knrun can read: it may be billed
    code: int | None = None  # a failed result's code, when it has one

    @property
    def cancelled(self) -> bool:
        """Listed as an error because the request was cancelled before it ran (gRPC's code 1,
        or a message that says so: the REST shapes often carry no code)."""
        if self.reply is not None or self.unreadable:
            return False
        return self.code == CANCELLED_CODE or "cancel" in (self.error or "").lower()


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def parse_batch(data: Any) -> BatchInfo:
    if not isinstance(data, dict) or not data.get("batch_id"):
        raise UnreadableReply(f"xAI batch: no batch_id in the reply: {str(data)[:160]}")
    state, costs = data.get("state"), _dict(data.get("cost_breakdown"))
    counters = _dict(state)
    total = costs.get("total_cost_usd_ticks")
    return BatchInfo(
        batch_id=str(data["batch_id"]),
        name=str(data.get("name") or ""),
        counted=isinstance(state, dict) and "num_pending" in counters,
        num_requests=_int(counters.get("num_requests")),
        num_pending=_int(counters.get("num_pending")),
        num_success=_int(counters.get("num_success")),
        num_error=_int(counters.get("num_error")),
        num_cancelled=_int(counters.get("num_cancelled")),
        total_cost_ticks=None if total is None else _int(total),
        cancelled_by_xai=str(data["cancel_by_xai_message"])
        if data.get("cancel_by_xai_message")
        else None,
        cancelled=bool(data.get("cancel_time")),
    )


def parse_result(item: Any, model: str) -> BatchResult | None:
    """One entry of a results page: `{batch_request_id, batch_result: {response:
    {chat_get_completion: <chat reply>}}}`, or a failure, which the public record shows as
    `batch_result.error` (a string, or `{code, message}`) or a top-level `error_message`. An
    entry with neither is a failure too. None for an entry without an id."""
    if not isinstance(item, dict) or not item.get("batch_request_id"):
        return None
    request_id = str(item["batch_request_id"])
    result = _dict(item.get("batch_result"))
    response = _dict(result.get("response"))
    key = next((k for k in ("chat_get_completion", "completion_response") if k in response), None)
    if key is not None:
        try:
            return BatchResult(request_id, parse_chat(response[key], model))
        except BadResponse as exc:
            return BatchResult(request_id, None, str(exc), unreadable=True)
    for error in (result.get("error"), item.get("error_message"), item.get("error")):
        if isinstance(error, dict) and (error.get("message") or error.get("code")):
            code = error.get("code")
            message = str(error.get("message") or f"error code {code}")
            return BatchResult(request_id, None, message, code=_int(code) if code else None)
        if isinstance(error, str) and error:
            return BatchResult(request_id, None, error)
    return BatchResult(request_id, None, "the batch returned neither a reply nor an error")


Sleep = Callable[[float], Awaitable[None]]
OnWait = Callable[[str, XaiError, float], None]


class BatchApi:
    def __init__(
        self,
        xai: XaiClient,
        *,
        sleep: Sleep = asyncio.sleep,
        on_wait: OnWait | None = None,
        max_wait_s: float = MAX_WAIT_S,
        rng: random.Random | None = None,
    ) -> None:
        """`sleep` keeps the caller's time (a simulator's, in tests); `on_wait(what, error,
        seconds)` hears of every wait, so a run can count and show them."""
        self.xai, self._sleep, self._on_wait = xai, sleep, on_wait
        self.max_wait_s = max_wait_s
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self.calls = 0  # every call made, waits included: what polling costs

    async def _call(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        """One call, waiting out 429s (always: xAI refused it before doing anything) and, for
        calls that may be repeated, any passing trouble; for the others a 5xx or a lost reply
        is the caller's to resolve (an add may have been applied)."""
        waited, tries = 0.0, 0
        while True:
            self.calls += 1
            try:
                return await self.xai.call(method, path, idempotent=idempotent, **kwargs)
            except (RateLimited, NotSent) as exc:
                problem: XaiError = exc
            except (ServerError, PossiblyBilled, UnreadableReply) as exc:
                if not idempotent:
                    raise
                problem = exc
            tries += 1
            delay = self._rng.uniform(0.5, 1.0) * min(BACKOFF_MAX_S, 2.0**tries)
            if isinstance(problem, RateLimited) and problem.retry_after is not None:
                delay = max(delay, problem.retry_after)
            if waited + delay > self.max_wait_s:
                raise problem
            if self._on_wait is not None:
                self._on_wait(f"{method} {path}", problem, delay)
            await self._sleep(delay)
            waited += delay

    async def create(self, name: str) -> BatchInfo:
        """A new batch. A reply lost after sending leaves the batch made or not: it is looked
        for by its name (knrun's names are unique), so a retry never makes a second one."""
        try:
            data = await self._call("POST", "/batches", idempotent=False, json={"name": name})
        except (ServerError, PossiblyBilled) as exc:
            found = await self.find(name)
            if found is None:
                raise XaiError(f"creating batch {name!r}: {exc}; no batch of that name") from exc
            return found
        return parse_batch(data)

    async def find(self, name: str) -> BatchInfo | None:
        token: str | None = None
        while True:
            data, token = await self._page("/batches", token, "batches")
            for entry in data.get("batches") or []:
                if isinstance(entry, dict) and entry.get("name") == name:
                    return parse_batch(entry)
            if token is None:
                return None

    async def get(self, batch_id: str) -> BatchInfo:
        return parse_batch(await self._call("GET", f"/batches/{quote(batch_id)}", idempotent=True))

    async def add(self, batch_id: str, requests: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Add (id, chat body) requests. Sent once (a 429 is waited out: it was refused); a 5xx
        or a reply lost on the way back leaves the caller not knowing, and it reads the batch's
        request list before adding any of them again. The reply body is not relied on."""
        body = {
            "batch_requests": [
                {"batch_request_id": rid, "batch_request": {"chat_get_completion": chat}}
                for rid, chat in requests
            ]
        }
        path = f"/batches/{quote(batch_id)}/requests"
        await self._call("POST", path, idempotent=False, json=body)

    async def request_states(self, batch_id: str) -> dict[str, str]:
        """Every request the batch's list holds, with its state (pending, succeeded, failed,
        cancelled): what was really added. The list may lag what was added."""
        states: dict[str, str] = {}
        token: str | None = None
        while True:
            path = f"/batches/{quote(batch_id)}/requests"
            data, token = await self._page(path, token, "batch_request_metadata")
            for entry in data.get("batch_request_metadata") or []:
                if isinstance(entry, dict) and entry.get("batch_request_id"):
                    state = str(entry.get("state") or PENDING).lower()
                    states[str(entry["batch_request_id"])] = state.removeprefix("state_")
            if token is None:
                return states

    async def results(
        self, batch_id: str, model: str, token: str | None = None
    ) -> tuple[list[BatchResult], str | None, int]:
        """One page of results (in no guaranteed order, and only those done so far), the next
        page's token (None: nothing after it), and the page's size in entries."""
        data, following = await self._page(f"/batches/{quote(batch_id)}/results", token, "results")
        entries = data.get("results")
        if not isinstance(entries, list):
            raise UnreadableReply("xAI batch results: no 'results' list in the reply")
        page = [r for r in (parse_result(entry, model) for entry in entries) if r is not None]
        return page, following, len(entries)

    async def _page(
        self, path: str, token: str | None, key: str
    ) -> tuple[dict[str, Any], str | None]:
        """One page of a paged list, and the next page's token: None after the last page, and
        after an empty one whatever it says (a token may have nothing behind it)."""
        params: dict[str, Any] = {"limit": PAGE}
        if token:
            params["pagination_token"] = token
        data = _dict(await self._call("GET", path, idempotent=True, params=params))
        following = data.get("pagination_token")
        return data, (str(following) if following and data.get(key) else None)

    async def cancel(self, batch_id: str) -> BatchInfo:
        """Cancel what is still pending; what is done stays done (and billed), and requests
        already running may still finish, and be billed, while the cancel spreads."""
        data = await self._call("POST", f"/batches/{quote(batch_id)}:cancel", idempotent=True)
        return (
            parse_batch(data)
            if isinstance(data, dict) and data.get("batch_id")
            else await self.get(batch_id)
        )
