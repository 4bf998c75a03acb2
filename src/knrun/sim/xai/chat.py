"""The simulated chat completions endpoint: refusals before any work, billing at acceptance,
the model's latency (a client that leaves is still billed), and the reply with its usage."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from knrun.sim import replies
from knrun.sim.account import Account
from knrun.sim.asgi import Request, Response
from knrun.sim.ratelimit import RateLimiter
from knrun.sim.scenario import Scenario, SimModel
from knrun.sim.xai.models import (
    RANDOM_FAULTS,
    XaiStats,
    error,
    parameter_problem,
    prompt_key,
    rate_text,
)

Disconnected = Callable[[], Awaitable[None]]


class ChatEndpoint:
    """`POST /v1/chat/completions`, as a part of the simulator (which sets these attributes)."""

    scenario: Scenario
    account: Account
    stats: XaiStats
    limits: RateLimiter
    forced: deque[str]
    _clock: Callable[[], float]
    _sleep: Callable[[float], Awaitable[None]]
    _rng: random.Random
    _conversations: set[str]

    def charge(self, ticks: int) -> None:
        """Bill `ticks` now; the prepaid balance shows it after the billing lag."""
        self.stats.billed_ticks += ticks
        self.account.charge(ticks)

    async def _chat(self, request: Request, disconnected: Disconnected | None) -> Response:
        self.stats.chat_requests += 1
        self.stats.arrivals.append(self._clock())
        self.account.other_spender_acts(self.stats.chat_requests)
        refused, body, model = self._refuse_request(request)
        if refused is not None:
            return refused
        assert body is not None and model is not None
        messages = body["messages"]
        usage = self.usage_of(body, model, messages, request.headers.get("x-grok-conv-id"))
        if usage.prompt > model.max_prompt_tokens:
            too_long = (
                f"This model's maximum prompt length is {model.max_prompt_tokens} but the request "
                f"contains {usage.prompt} tokens."
            )
            return self._outcome("bad_request", error(400, "invalid-argument", too_long))
        outcome = self.pick_outcome()
        window = self.limits.for_model(model.id)
        if outcome == "rate_limited":
            return self._outcome(
                outcome, self._rate_limited(rate_text(self.scenario.team_id, model.id))
            )
        if message := window.refusal(self.scenario.team_id, model.id, usage.prompt):
            return self._outcome("rate_limited", self._rate_limited(message))
        if outcome == "schema_refused":  # a refusal that mentions credit, and is not about it
            text = (
                "Invalid response_format: the JSON schema's property 'credit_points' has an "
                "unsupported type 'decimal'."
            )
            return self._outcome("bad_request", error(400, "invalid-argument", text))
        if outcome == "credit_exhausted" or self.account.settled_balance_ticks() <= 0:
            return self._outcome("credit_exhausted", self.account.credit_refusal())
        if outcome == "server_error":
            unavailable = "The service is temporarily unavailable. Please try again."
            return self._outcome(outcome, error(503, "unavailable", unavailable))
        # Accepted: billed now, whatever happens to the reply.
        finish = "length" if outcome == "truncated" else "stop"
        cap = int(body.get("max_completion_tokens") or body.get("max_tokens") or 10**9)
        if usage.visible > cap:
            usage, finish = (
                replies.Usage(usage.prompt, usage.cached, cap, usage.reasoning),
                "length",
            )
        if outcome == "refusal":
            usage = replies.Usage(usage.prompt, usage.cached, 8, usage.reasoning)
        cost = replies.price_usage(model, usage)
        self.charge(cost)
        self.stats.paid_by_prompt[prompt_key(messages)] += 1
        window.admit(usage.total)
        self.stats.admitted.append(self._clock())
        if await self._compute(disconnected, cost):
            return self._outcome("abandoned", Response.json(499, {}))
        reply = self.reply_of(body, model, usage, cost, outcome, finish)
        return self._outcome(outcome or "ok", Response.json(200, reply, window.headers()))

    def _refuse_request(
        self, request: Request
    ) -> tuple[Response | None, dict[str, Any] | None, SimModel | None]:
        """Refusals before any work is done: body, model, parameters, prompt length."""
        try:
            body = request.json()
        except ValueError as exc:
            text = f"Failed to parse the request body as JSON: {exc}"
            return self._outcome("bad_request", Response.text(422, text, "text/plain")), None, None
        missing = [
            key for key in ("model", "messages") if not isinstance(body, dict) or key not in body
        ]
        if missing:
            text = (
                "Failed to deserialize the JSON body into the target type: missing field "
                f"`{missing[0]}` at line 1 column {len(request.body)}"
            )
            return self._outcome("bad_request", Response.text(422, text, "text/plain")), None, None
        name = str(body["model"])
        model = self.scenario.model(name)
        if model is None and self.scenario.unknown_model_status == 400:
            plain = Response.text(400, f"Model not found: {name}", "text/plain")
            return self._outcome("model_missing", plain), None, None
        if model is None or not model.served:
            return self._outcome("model_missing", self._model_missing(name)), None, None
        problem = parameter_problem(model, body)
        if problem is not None:
            return (
                self._outcome("bad_request", error(400, "invalid-argument", problem)),
                None,
                None,
            )
        return None, body, model

    def usage_of(
        self, body: dict[str, Any], model: SimModel, messages: list[Any], conv_id: str | None
    ) -> replies.Usage:
        prompt = sum(replies.tokens(str(m.get("content") or "")) for m in messages)
        system = sum(
            replies.tokens(str(m.get("content") or ""))
            for m in messages
            if m.get("role") == "system"
        )
        seen = conv_id is not None and conv_id in self._conversations
        cached = system if seen and self.scenario.prompt_cache else 0
        if conv_id:
            self._conversations.add(conv_id)
        shape = self.scenario.output
        visible = max(1, round(self._rng.gauss(shape.visible_tokens_mean, shape.visible_tokens_sd)))
        effort = body.get("reasoning_effort")
        reasoning = replies.reasoning_tokens(model, effort, shape, self._rng)
        return replies.Usage(prompt, cached, visible, reasoning)

    async def _compute(self, disconnected: Disconnected | None, cost: int) -> bool:
        """Spend the model's latency; True when the client left first (the bill stands)."""
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        latency = self.latency()
        self.stats.latencies.append(latency)
        work = asyncio.ensure_future(self._sleep(latency * self.scenario.latency.time_scale))
        watch = asyncio.ensure_future(disconnected()) if disconnected else None
        try:
            waiting = {work} if watch is None else {work, watch}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            left = not work.done()
        except asyncio.CancelledError:  # an in-process client timed out and cancelled us
            self._abandoned(cost)
            raise
        finally:
            self.stats.in_flight -= 1
            for task in (work, watch):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if left:
            self._abandoned(cost)
        return left

    def _abandoned(self, cost: int) -> None:
        self.stats.abandoned_requests += 1
        self.stats.abandoned_ticks += cost

    def pick_outcome(self) -> str | None:
        if self.forced:
            return self.forced.popleft()
        faults = self.scenario.faults
        roll = self._rng.random()
        for name in RANDOM_FAULTS:
            rate = getattr(faults, name)
            if roll < rate:
                return name
            roll -= rate
        if faults.missing_cost and self._rng.random() < faults.missing_cost:
            return "missing_cost"
        return None

    def reply_of(
        self,
        body: dict[str, Any],
        model: SimModel,
        usage: replies.Usage,
        cost: int,
        outcome: str | None,
        finish: str,
    ) -> dict[str, Any]:
        schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
        text, refusal = replies.spoil(
            replies.content(schema, usage.visible, self._rng), outcome, finish
        )
        billing: dict[str, Any] = {} if outcome == "missing_cost" else {"cost_in_usd_ticks": cost}
        return {
            "id": f"sim-{self.stats.chat_requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.id,
            "system_fingerprint": model.fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": refusal},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt,
                "completion_tokens": usage.visible,
                "total_tokens": usage.total,
                "prompt_tokens_details": {
                    "text_tokens": usage.prompt,
                    "cached_tokens": usage.cached,
                    "audio_tokens": 0,
                    "image_tokens": 0,
                },
                "completion_tokens_details": {
                    "reasoning_tokens": usage.reasoning,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
                "num_sources_used": 0,
                **billing,
            },
        }

    def latency(self) -> float:
        """One request's simulated latency in seconds, unscaled."""
        shape = self.scenario.latency
        if shape.median_s <= 0:
            return 0.0
        return self._rng.lognormvariate(math.log(shape.median_s), shape.sigma)

    def _outcome(self, name: str, response: Response) -> Response:
        self.stats.outcomes[name] += 1
        self.stats.answered.append((self._clock(), name))
        return response

    def _listed(self) -> list[SimModel]:
        return [m for m in self.scenario.models if m.listed]

    def _model_missing(self, name: str) -> Response:
        return error(
            404,
            "not-found",
            f"The model {name} does not exist or your team "
            f"{self.scenario.team_id} does not have access to it.",
        )

    def _rate_limited(self, message: str) -> Response:
        retry = self.scenario.faults.retry_after_s
        scale = self.scenario.latency.time_scale
        headers = {} if retry is None else {"retry-after": f"{retry * scale:g}"}
        return error(429, "resource-exhausted", message, headers)
