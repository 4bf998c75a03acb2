"""The Batch API of the xAI simulator, from the public record (design section 6): create a
batch, add requests inline, read its counters and cost, page its results and request ids,
cancel it. Hostile the ways a real batch service is: a request is billed when it is processed,
at the model's own batch discount (none for models the Batch API refuses, which it refuses
outright); results arrive early and in no order; some come back as errors; xAI may cancel a
batch itself; a request id added twice with the same content is processed, and billed, twice.
Nothing runs in the background: requests whose time has come are processed at each call."""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from knrun.sim import replies
from knrun.sim.asgi import Request, Response

if TYPE_CHECKING:
    from knrun.sim.xai import XaiSimulator

_BATCH = re.compile(r"^/v1/batches/(?P<id>[^/:]+)(?P<rest>/requests|/results|:cancel)?$")
MAX_PAGE = 1000


@dataclass
class BatchStats:
    created: int = 0
    add_calls: int = 0
    added: int = 0  # requests accepted, duplicates included
    duplicates: int = 0  # ids added again with the same content: processed and billed again
    processed: int = 0
    billed_ticks: int = 0
    live_ticks: int = 0  # what the same requests would have cost live
    errors: int = 0
    cancel_calls: int = 0
    get_calls: int = 0
    result_pages: int = 0


@dataclass
class _Request:
    request_id: str
    body: dict[str, Any]
    digest: str
    due: float
    state: str = "pending"  # pending | succeeded | failed | cancelled
    result: dict[str, Any] | None = None


@dataclass
class _Batch:
    batch_id: str
    name: str
    created: float
    requests: dict[str, list[_Request]] = field(default_factory=dict)
    queue: list[tuple[float, int, _Request]] = field(default_factory=list)  # by due time
    results: list[dict[str, Any]] = field(default_factory=list)  # in the order they finished
    cost_ticks: int = 0
    cancelled_at: float | None = None
    cancelled_by_xai: str | None = None

    def count(self, state: str) -> int:
        return sum(r.state == state for rs in self.requests.values() for r in rs)


class BatchService:
    def __init__(self, sim: XaiSimulator) -> None:
        self.sim = sim
        self.batches: dict[str, _Batch] = {}
        self.stats = BatchStats()
        self._order = itertools.count()

    async def handle(self, request: Request, path: str) -> Response:
        if path == "/v1/batches":
            if request.method == "POST":
                return self._create(request)
            return Response.json(
                200,
                {
                    "batches": [self._view(b) for b in self.batches.values()],
                    "pagination_token": None,
                },
            )
        found = _BATCH.match(path)
        batch = self.batches.get(found["id"]) if found else None
        if found is None or batch is None:
            return _error(404, "not-found", f"Batch {found['id'] if found else path} not found.")
        self._process(batch)
        match request.method, found["rest"]:
            case "GET", None:
                self.stats.get_calls += 1
                return Response.json(200, self._view(batch))
            case "POST", "/requests":
                await self.sim.pause(self.sim.scenario.batch.add_latency_s)
                return self._add(batch, request)
            case "GET", "/requests":
                return self._ids(batch, request)
            case "GET", "/results":
                return self._results(batch, request)
            case "POST", ":cancel":
                self.stats.cancel_calls += 1
                self._cancel(batch, None)
                return Response.json(200, self._view(batch))
        return _error(404, "not-found", f"No handler for {request.method} {path}")

    # -- the endpoints ----------------------------------------------------------------------------

    def _create(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return Response.text(422, "missing field `name` at line 1 column 2", "text/plain")
        self.stats.created += 1
        batch_id = f"batch_sim_{self.stats.created:04d}"
        self.batches[batch_id] = _Batch(batch_id, body["name"], self.sim.now())
        return Response.json(200, self._view(self.batches[batch_id]))

    def _add(self, batch: _Batch, request: Request) -> Response:
        self.stats.add_calls += 1
        try:
            items = request.json()["batch_requests"]
            bodies = [
                (str(i["batch_request_id"]), i["batch_request"]["chat_get_completion"])
                for i in items
            ]
        except (ValueError, KeyError, TypeError):
            return Response.text(
                422,
                "Failed to deserialize the JSON body: missing field `batch_requests`",
                "text/plain",
            )
        if batch.cancelled_at is not None:
            return _error(400, "failed-precondition", f"Batch {batch.batch_id} is cancelled.")
        for _, body in bodies:  # the whole call is refused: nothing of it is added
            model = self.sim.scenario.model(str(body.get("model")))
            if model is None or not model.served:
                return _error(400, "invalid-argument", f"Model not found: {body.get('model')}")
            if model.batch_discount is None:
                return _error(
                    400,
                    "invalid-argument",
                    f"Model {model.id} is not supported for batch processing.",
                )
        for request_id, body in bodies:
            held = batch.requests.get(request_id)
            if held and held[0].digest != _digest(body):
                return _error(
                    412,
                    "failed-precondition",
                    f"A batch request with id {request_id} and different content already exists.",
                )
        if self.sim.settled_balance_ticks() <= 0:
            return self.sim.management.credit_exhausted()
        for request_id, body in bodies:
            self._enqueue(batch, request_id, body)
        behaviour = self.sim.scenario.batch
        if behaviour.adds_applied_then_503:
            behaviour.adds_applied_then_503 -= 1
            return _error(503, "unavailable", "The service is temporarily unavailable.")
        return Response.json(200, {})

    def _enqueue(self, batch: _Batch, request_id: str, body: dict[str, Any]) -> None:
        self.stats.added += 1
        held = batch.requests.setdefault(request_id, [])
        if held:
            self.stats.duplicates += 1
        delay = self.sim.scenario.batch.delay_s * self.sim.rng.uniform(0.5, 1.5)
        due = self.sim.now() + delay * self.sim.scenario.latency.time_scale
        entry = _Request(request_id, body, _digest(body), due)
        held.append(entry)
        heapq.heappush(batch.queue, (due, next(self._order), entry))

    def _ids(self, batch: _Batch, request: Request) -> Response:
        entries = [r for rs in batch.requests.values() for r in rs]
        start, end, token = _page(request, len(entries))
        meta = [
            {
                "batch_request_id": r.request_id,
                "endpoint": "/v1/chat/completions",
                "model": r.body.get("model"),
                "state": r.state,
            }
            for r in entries[start:end]
        ]
        return Response.json(200, {"batch_request_metadata": meta, "pagination_token": token})

    def _results(self, batch: _Batch, request: Request) -> Response:
        self.stats.result_pages += 1
        start, end, token = _page(request, len(batch.results))
        return Response.json(200, {"results": batch.results[start:end], "pagination_token": token})

    # -- processing -------------------------------------------------------------------------------

    def _process(self, batch: _Batch) -> None:
        """Process every request whose time has come, in due order (not the order added)."""
        now = self.sim.now()
        limit = self.sim.scenario.batch.xai_cancels_after
        while batch.queue and batch.queue[0][0] <= now and batch.cancelled_at is None:
            _, _, entry = heapq.heappop(batch.queue)
            if entry.state == "pending":
                self._run(batch, entry)
            if limit is not None and len(batch.results) >= limit:
                self._cancel(batch, self.sim.scenario.batch.xai_cancel_message)

    def _run(self, batch: _Batch, entry: _Request) -> None:
        sim, body = self.sim, entry.body
        model = sim.scenario.model(str(body.get("model")))
        assert model is not None and model.batch_discount is not None
        outcome = sim.pick_outcome()
        if outcome in ("rate_limited", "server_error", "credit_exhausted") or (
            sim.rng.random() < sim.scenario.batch.error_rate
        ):
            entry.state = "failed"
            self.stats.errors += 1
            entry.result = {
                "batch_request_id": entry.request_id,
                "error_message": "Internal error while processing the request. Please retry.",
            }
            batch.results.append(entry.result)
            return
        usage = sim.usage_of(body, model, body.get("messages") or [], None)
        cap = int(body.get("max_completion_tokens") or 10**9)
        finish = "length" if outcome == "truncated" else "stop"
        if usage.visible > cap:
            usage, finish = (
                replies.Usage(usage.prompt, usage.cached, cap, usage.reasoning),
                "length",
            )
        live = replies.price_usage(model, usage)
        cost = live - int(live * model.batch_discount)  # whole ticks, as billed
        sim.charge(cost)
        self.stats.processed += 1
        self.stats.billed_ticks += cost
        self.stats.live_ticks += live
        batch.cost_ticks += cost
        reply = sim.reply_of(body, model, usage, cost, outcome, finish)
        entry.state = "succeeded"
        entry.result = {
            "batch_request_id": entry.request_id,
            "batch_result": {"response": {"chat_get_completion": reply}},
        }
        batch.results.append(entry.result)

    def _cancel(self, batch: _Batch, by_xai: str | None) -> None:
        if batch.cancelled_at is not None:
            return
        batch.cancelled_at = self.sim.now()
        batch.cancelled_by_xai = by_xai
        for rs in batch.requests.values():
            for entry in rs:
                if entry.state == "pending":
                    entry.state = "cancelled"
        batch.queue.clear()

    def _view(self, batch: _Batch) -> dict[str, Any]:
        counts = {
            state: batch.count(state) for state in ("pending", "succeeded", "failed", "cancelled")
        }
        view: dict[str, Any] = {
            "batch_id": batch.batch_id,
            "name": batch.name,
            "create_time": _stamp(batch.created),
            "state": {
                "num_requests": sum(counts.values()),
                "num_pending": counts["pending"],
                "num_success": counts["succeeded"],
                "num_error": counts["failed"],
                "num_cancelled": counts["cancelled"],
            },
            "cost_breakdown": {"total_cost_usd_ticks": batch.cost_ticks},
        }
        if batch.cancelled_at is not None:
            view["cancel_time"] = _stamp(batch.cancelled_at)
        if batch.cancelled_by_xai:
            view["cancel_by_xai_message"] = batch.cancelled_by_xai
        return view


def _digest(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


def _page(request: Request, total: int) -> tuple[int, int, str | None]:
    """Offsets of one page and the next page's opaque token (None on the last)."""
    try:
        limit = max(1, min(int(request.query.get("limit") or 100), MAX_PAGE))
        token = request.query.get("pagination_token")
        start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
    except ValueError:
        limit, start = 100, 0
    end = min(start + limit, total)
    return start, end, base64.urlsafe_b64encode(str(end).encode()).decode() if end < total else None


def _stamp(seconds: float) -> str:
    return f"1970-01-01T00:00:00Z+{seconds:.3f}s"


def _error(status: int, code: str, message: str) -> Response:
    return Response.json(status, {"code": code, "error": message})
