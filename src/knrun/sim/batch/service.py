"""The Batch API's endpoints, as the simulator answers them: create a batch, add requests inline,
read its counters and cost, page its results and its request list, cancel it.

Hostile the ways a real batch service is (design section 6): a request is billed when processed,
at the model's own batch discount (models the Batch API refuses are refused outright); results
come in no order and a last page may carry a token with nothing behind it; counters, results and
the request list disagree for a while (`held`); a cancel takes `cancel_spread_s` to reach every
request, and what runs meanwhile is billed; once the credit is gone, requests end in errors that
say so; every call may be answered 429 (creations and adds also have real windows), with no
Retry-After; an add may be applied and then answered 503, or refused with a 503. Nothing runs in
the background: requests whose time has come are processed at each call."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from knrun.sim.asgi import Request, Response
from knrun.sim.batch.held import CANCELLED, FAILED, SUCCEEDED, Batch, BatchRequest, BatchStats
from knrun.sim.batch.host import BatchHost
from knrun.sim.batch.processing import Processor
from knrun.sim.ratelimit import RollingWindow
from knrun.sim.scenario import BatchBehaviour

_BATCH = re.compile(r"^/v1/batches/(?P<id>[^/:]+)(?P<rest>/requests|/results|:cancel)?$")
MAX_PAGE = 1000


class BatchService:
    def __init__(self, host: BatchHost) -> None:
        self.host = host
        self.batches: dict[str, Batch] = {}
        self.stats = BatchStats()
        self.processor = Processor(host, self.stats)
        scale = host.scenario.latency.time_scale
        self._creations = RollingWindow(1.0 * scale, host.now)
        self._adds = RollingWindow(30.0 * scale, host.now)

    @property
    def behaviour(self) -> BatchBehaviour:
        return self.host.scenario.batch

    def _scaled(self, simulated_s: float) -> float:
        return simulated_s * self.host.scenario.latency.time_scale

    async def handle(self, request: Request, path: str) -> Response:
        if refused := self._rate_limited(request, path):
            return refused
        if path == "/v1/batches":
            if request.method == "POST":
                return self._create(request)
            return Response.json(200, {"batches": [self._view(b) for b in self.batches.values()]})
        found = _BATCH.match(path)
        batch = self.batches.get(found["id"]) if found else None
        if found is None or batch is None:
            return _error(404, "not-found", f"Batch {found['id'] if found else path} not found.")
        self.processor.process(batch)
        match request.method, found["rest"]:
            case "GET", None:
                self.stats.get_calls += 1
                return Response.json(200, self._view(batch))
            case "POST", "/requests":
                await self.host.pause(self.behaviour.add_latency_s)
                return self._add(batch, request)
            case "GET", "/requests":
                self.stats.id_pages += 1
                listed = batch.request_list(self.host.now())
                return self._paged(request, listed, "batch_request_metadata")
            case "GET", "/results":
                self.stats.result_pages += 1
                return self._paged(request, batch.results(self.host.now()), "results")
            case "POST", ":cancel":
                self.stats.cancel_calls += 1
                self.processor.cancel(batch, None)
                return Response.json(200, self._view(batch))
        return _error(404, "not-found", f"No handler for {request.method} {path}")

    # -- rate limits ------------------------------------------------------------------------------

    def _rate_limited(self, request: Request, path: str) -> Response | None:
        """Any call may be refused at random; creations (about 2 a second) and adds (about
        1,000 calls per 30 s per team) also have windows. No Retry-After, as live."""
        team = self.host.scenario.team_id
        message = None
        if self.host.chance() < self.behaviour.rate_limited_rate:
            message = f"Too many requests for team {team}. Please slow down."
        elif request.method == "POST" and path == "/v1/batches":
            if self._creations.total() + 1 > self.behaviour.creates_per_s:
                message = f"Too many batches created for team {team}. Please slow down."
            else:
                self._creations.add(1)
        elif request.method == "POST" and path.endswith("/requests"):
            if self._adds.total() + 1 > self.behaviour.add_calls_per_30s:
                message = f"Too many batch requests added for team {team}. Please slow down."
            else:
                self._adds.add(1)
        if message is None:
            return None
        self.stats.rate_limited += 1
        return _error(429, "resource-exhausted", message)

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
        order = self.behaviour.results_order
        self.batches[batch_id] = Batch(batch_id, body["name"], self.host.now(), order)
        return Response.json(200, self._view(self.batches[batch_id]))

    def _add(self, batch: Batch, request: Request) -> Response:
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
        if refused := self._refuse_add(batch, bodies):
            return refused
        behaviour = self.behaviour
        if behaviour.adds_refused_503:
            behaviour.adds_refused_503 -= 1
            return _error(503, "unavailable", "The service is temporarily unavailable.")
        for request_id, body in bodies:
            self._enqueue(batch, request_id, body)
        if behaviour.adds_applied_then_503:
            behaviour.adds_applied_then_503 -= 1
            return _error(503, "unavailable", "The service is temporarily unavailable.")
        return Response.json(200, {})

    def _refuse_add(self, batch: Batch, bodies: list[tuple[str, Any]]) -> Response | None:
        """The whole call is refused (nothing of it is added) for any one bad request."""
        if batch.cancel_requested is not None:
            return _error(400, "failed-precondition", f"Batch {batch.batch_id} is cancelled.")
        for request_id, body in bodies:
            model = self.host.scenario.model(str(body.get("model")))
            if model is None or not model.served:
                return _error(400, "invalid-argument", f"Model not found: {body.get('model')}")
            if model.batch_discount is None:
                return _error(
                    400,
                    "invalid-argument",
                    f"Model {model.id} is not supported for batch processing.",
                )
            held = batch.requests.get(request_id)
            if held and held[0].digest != _digest(body):
                return _error(
                    412,
                    "failed-precondition",
                    f"A batch request with id {request_id} and different content already exists.",
                )
        if self.host.settled_balance_ticks() <= 0:
            return self.host.credit_refusal()
        return None

    def _enqueue(self, batch: Batch, request_id: str, body: dict[str, Any]) -> None:
        now, behaviour = self.host.now(), self.behaviour
        delay = behaviour.delay_s * (0.5 + self.host.chance())
        entry = BatchRequest(
            request_id,
            body,
            _digest(body),
            added_at=now,
            due=now + self._scaled(delay),
            listed_at=now + self._scaled(behaviour.ids_lag_s),
        )
        self.stats.added += 1
        if batch.hold(entry):
            self.stats.duplicates += 1

    def _paged(self, request: Request, entries: list[Any], key: str) -> Response:
        """One page and the next page's opaque token: an offset into the list as it stands at
        this read, so an entry listed meanwhile before the offset shifts the pages after it. The
        last page may carry a token with nothing behind it."""
        try:
            limit = max(1, min(int(request.query.get("limit") or 100), MAX_PAGE))
            token = request.query.get("pagination_token")
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError:
            return _error(400, "invalid-argument", "Invalid pagination token.")
        end = min(start + limit, len(entries))
        more = end < len(entries) or (
            self.behaviour.trailing_empty_page and end > start and end == len(entries)
        )
        following = base64.urlsafe_b64encode(str(end).encode()).decode() if more else None
        response = Response.json(200, {key: entries[start:end], "pagination_token": following})
        if key == "results":
            self.stats.result_bytes += len(response.body)
        return response

    def _view(self, batch: Batch) -> dict[str, Any]:
        view: dict[str, Any] = {
            "batch_id": batch.batch_id,
            "name": batch.name,
            "create_time": _stamp(batch.created),
            "cost_breakdown": {"total_cost_usd_ticks": batch.cost_ticks},
        }
        if self.host.chance() >= self.behaviour.counters_missing_rate:
            counts = batch.counters(self.host.now())
            view["state"] = {
                "num_requests": sum(counts.values()),
                "num_pending": counts["pending"],
                "num_success": counts[SUCCEEDED],
                "num_error": counts[FAILED],
                "num_cancelled": counts[CANCELLED],
            }
        if batch.cancel_requested is not None:
            view["cancel_time"] = _stamp(batch.cancel_requested)
        if batch.cancelled_by_xai:
            view["cancel_by_xai_message"] = batch.cancelled_by_xai
        return view


def _digest(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


def _stamp(seconds: float) -> str:
    return f"1970-01-01T00:00:00Z+{seconds:.3f}s"


def _error(status: int, code: str, message: str) -> Response:
    return Response.json(status, {"code": code, "error": message})
