"""xAI's Batch API over REST: create a batch, add requests, read its counters, page its results
and the ids it holds, cancel it. Shapes from xAI's batch proto (xai-org/xai-proto, as shipped in
xai-sdk-python) and community REST clients; every reply is read defensively.

Requests in a batch are billed as xAI processes them, at the model's batch price; they do not
count against the rate limits, and most finish "typically within 24 hours"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from knrun.xai.client import XaiClient
from knrun.xai.errors import BadResponse, UnreadableReply
from knrun.xai.models import ChatReply, parse_chat

RESULTS_PAGE = 100  # results per page read
IDS_PAGE = 1000  # request ids per page read


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    name: str
    num_requests: int = 0
    num_pending: int = 0
    num_success: int = 0
    num_error: int = 0
    num_cancelled: int = 0
    total_cost_ticks: int | None = None  # cost_breakdown.total_cost_usd_ticks, when sent
    cancelled_by_xai: str | None = None  # cancel_by_xai_message: xAI's own words
    cancelled: bool = False

    @property
    def finished(self) -> int:
        return self.num_success + self.num_error + self.num_cancelled

    @property
    def done(self) -> bool:
        """No status enum: a batch is done when nothing in it is pending."""
        return self.num_pending == 0


@dataclass(frozen=True)
class BatchResult:
    request_id: str
    reply: ChatReply | None  # the chat reply, or None with `error`
    error: str | None = None
    unreadable: bool = False  # a reply came, but not one knrun can read: it may be billed


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
    state, costs = _dict(data.get("state")), _dict(data.get("cost_breakdown"))
    total = costs.get("total_cost_usd_ticks")
    return BatchInfo(
        batch_id=str(data["batch_id"]),
        name=str(data.get("name") or ""),
        num_requests=_int(state.get("num_requests")),
        num_pending=_int(state.get("num_pending")),
        num_success=_int(state.get("num_success")),
        num_error=_int(state.get("num_error")),
        num_cancelled=_int(state.get("num_cancelled")),
        total_cost_ticks=None if total is None else _int(total),
        cancelled_by_xai=str(data["cancel_by_xai_message"])
        if data.get("cancel_by_xai_message")
        else None,
        cancelled=bool(data.get("cancel_time")),
    )


def parse_result(item: Any, model: str) -> BatchResult | None:
    """One entry of a results page: `{batch_request_id, batch_result: {response:
    {chat_get_completion: <chat reply>}}}`, or an error as `error_message` or `error:
    {code, message}`. None for an entry without an id (nothing to match it to)."""
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
    error = item.get("error") or result.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("code") or "")
    else:
        message = str(item.get("error_message") or error or "")
    return BatchResult(
        request_id, None, message or "the batch returned neither a reply nor an error"
    )


class BatchApi:
    def __init__(self, xai: XaiClient) -> None:
        self.xai = xai

    async def create(self, name: str) -> BatchInfo:
        # Not retried blindly: a lost reply would leave a second, empty batch (harmless: an
        # empty batch costs nothing, but knrun records only the one it got back).
        return parse_batch(
            await self.xai.call("POST", "/batches", idempotent=False, json={"name": name})
        )

    async def get(self, batch_id: str) -> BatchInfo:
        return parse_batch(
            await self.xai.call("GET", f"/batches/{quote(batch_id)}", idempotent=True)
        )

    async def batches(self, limit: int = 100) -> list[BatchInfo]:
        data = await self.xai.call("GET", "/batches", idempotent=True, params={"limit": limit})
        entries = data.get("batches") if isinstance(data, dict) else None
        return [parse_batch(entry) for entry in entries or [] if isinstance(entry, dict)]

    async def add(self, batch_id: str, requests: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Add (id, chat body) requests. Sent once: a reply lost on the way back leaves the
        caller not knowing; it re-reads the ids the batch holds (`request_ids`) before adding
        any of them again. The reply body is not relied on."""
        body = {
            "batch_requests": [
                {"batch_request_id": rid, "batch_request": {"chat_get_completion": chat}}
                for rid, chat in requests
            ]
        }
        await self.xai.call(
            "POST", f"/batches/{quote(batch_id)}/requests", idempotent=False, json=body
        )

    async def request_ids(self, batch_id: str) -> set[str]:
        """Every request id the batch holds, from xAI's own list: what was really added."""
        ids: set[str] = set()
        token: str | None = None
        while True:
            data, token = await self._page(f"/batches/{quote(batch_id)}/requests", IDS_PAGE, token)
            entries = data.get("batch_request_metadata") or []
            ids.update(
                str(entry["batch_request_id"])
                for entry in entries
                if isinstance(entry, dict) and entry.get("batch_request_id")
            )
            if token is None:
                return ids

    async def results(
        self, batch_id: str, model: str, token: str | None = None
    ) -> tuple[list[BatchResult], str | None]:
        """One page of results (unordered, and only those done so far) and the next page's
        token (None: the last page)."""
        data, following = await self._page(
            f"/batches/{quote(batch_id)}/results", RESULTS_PAGE, token
        )
        entries = data.get("results")
        if not isinstance(entries, list):
            raise UnreadableReply("xAI batch results: no 'results' list in the reply")
        page = [r for r in (parse_result(entry, model) for entry in entries) if r is not None]
        return page, following

    async def _page(
        self, path: str, limit: int, token: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """One page of a paged list, and the next page's token (None after an empty page or
        the last one)."""
        params: dict[str, Any] = {"limit": limit}
        if token:
            params["pagination_token"] = token
        data = _dict(await self.xai.call("GET", path, idempotent=True, params=params))
        following = data.get("pagination_token")
        listed = data.get("results") or data.get("batch_request_metadata")
        return data, (str(following) if following and listed else None)

    async def cancel(self, batch_id: str) -> BatchInfo:
        """Cancel what is still pending; what is done stays done (and billed)."""
        data = await self.xai.call(
            "POST", f"/batches/{quote(batch_id)}:cancel", idempotent=True, json={}
        )
        return (
            parse_batch(data)
            if isinstance(data, dict) and data.get("batch_id")
            else await self.get(batch_id)
        )
