"""How the simulated Batch API processes requests: each is billed when it runs, at the model's own
batch discount; once the credit is gone, requests end in errors that say so; a cancel reaches the
requests only after `cancel_spread_s`, and those due meanwhile still run and are billed; each
read (counters, results, request list) learns of a request's end up to `view_lag_s` late."""

from __future__ import annotations

import heapq
import json
from typing import Any

from knrun.sim import replies
from knrun.sim.batch.held import CANCELLED, FAILED, SUCCEEDED, Batch, BatchRequest, BatchStats
from knrun.sim.batch.host import BatchHost
from knrun.sim.scenario import BatchBehaviour

INTERNAL_ERROR = "Internal error while processing the request. Please retry."


class Processor:
    def __init__(self, host: BatchHost, stats: BatchStats) -> None:
        self.host, self.stats = host, stats

    @property
    def behaviour(self) -> BatchBehaviour:
        return self.host.scenario.batch

    def _scaled(self, simulated_s: float) -> float:
        return simulated_s * self.host.scenario.latency.time_scale

    def process(self, batch: Batch) -> None:
        """Process every request whose time has come, in due order (not the order added). A
        cancel reaches requests only once it has spread: those due before then still run."""
        now = self.host.now()
        horizon = now if batch.cancel_effective is None else min(now, batch.cancel_effective)
        limit = self.behaviour.xai_cancels_after
        while batch.queue and batch.queue[0][0] <= horizon:
            _, _, entry = heapq.heappop(batch.queue)
            if entry.state == "pending":
                self._run(batch, entry)
            if limit is not None and batch.cancel_requested is None and batch.finished >= limit:
                self.cancel(batch, self.behaviour.xai_cancel_message)
                horizon = min(horizon, batch.cancel_effective or horizon)
        if batch.cancel_effective is not None and now >= batch.cancel_effective:
            for entry in batch.added:
                if entry.state == "pending":
                    listed = self.behaviour.cancelled_in_results
                    error = self._error_entry(1, "Request cancelled.") if listed else None
                    self._end(batch, entry, CANCELLED, batch.cancel_effective, error)

    def _run(self, batch: Batch, entry: BatchRequest) -> None:
        host, body = self.host, entry.body
        model = host.scenario.model(str(body.get("model")))
        assert model is not None and model.batch_discount is not None
        if host.settled_balance_ticks() <= 0:
            self.stats.credit_errors += 1
            refusal = json.loads(host.credit_refusal().body)
            self._failed(batch, entry, str(refusal.get("error")))
            return
        outcome = host.pick_outcome()
        if outcome in ("rate_limited", "server_error", "credit_exhausted") or (
            host.chance() < self.behaviour.error_rate
        ):
            self._failed(batch, entry, INTERNAL_ERROR)
            return
        usage = host.usage_of(body, model, body.get("messages") or [], None)
        cap = int(body.get("max_completion_tokens") or 10**9)
        finish = "length" if outcome == "truncated" else "stop"
        if usage.visible > cap:
            usage = replies.Usage(usage.prompt, usage.cached, cap, usage.reasoning)
            finish = "length"
        live = replies.price_usage(model, usage)
        cost = live - int(live * model.batch_discount)  # whole ticks, as billed
        host.charge(cost)
        self.stats.processed += 1
        self.stats.billed_ticks += cost
        self.stats.live_ticks += live
        batch.cost_ticks += cost
        entry.cost_ticks = cost
        if batch.cancel_requested is not None:
            self.stats.processed_after_cancel += 1
            self.stats.billed_after_cancel_ticks += cost
        reply = host.reply_of(body, model, usage, cost, outcome, finish)
        result = {"batch_result": {"response": {"chat_get_completion": reply}}}
        self._end(batch, entry, SUCCEEDED, entry.due, result)

    def _failed(self, batch: Batch, entry: BatchRequest, message: str) -> None:
        self.stats.errors += 1
        self._end(batch, entry, FAILED, entry.due, self._error_entry(3, message))

    def _error_entry(self, code: int, message: str) -> dict[str, Any]:
        """A failed entry, in one of the shapes the public record shows (they disagree): a
        top-level `error_message`, `batch_result.error` as a string, or as `{code, message}`."""
        shape = int(self.host.chance() * 3)
        if shape == 0:
            return {"error_message": message}
        if shape == 1:
            return {"batch_result": {"error": message}}
        return {"batch_result": {"error": {"code": code, "message": message}}}

    def _end(
        self,
        batch: Batch,
        entry: BatchRequest,
        state: str,
        at: float,
        result: dict[str, Any] | None,
    ) -> None:
        """The request ends at `at`; each read learns of it up to `view_lag_s` later."""
        lag = self._scaled(self.behaviour.view_lag_s)
        entry.state, entry.ended_at = state, at
        batch.finished += state in (SUCCEEDED, FAILED)
        entry.counted_at = at + lag * self.host.chance()
        entry.stated_at = at + lag * self.host.chance()
        if result is not None:
            entry.result = {"batch_request_id": entry.request_id, **result}
            entry.shown_at = at + lag * self.host.chance()
            batch.ended(entry)

    def cancel(self, batch: Batch, by_xai: str | None) -> None:
        if batch.cancel_requested is not None:
            return
        now = self.host.now()
        batch.cancel_requested = now
        batch.cancel_effective = now + self._scaled(self.behaviour.cancel_spread_s)
        batch.cancelled_by_xai = by_xai
