"""An xAI simulator written from the public record (design section 6), not from knrun's own
assumptions: chat completions, the live model list, the API key, and the Management API's
prepaid balance, as one ASGI app (in-process through `httpx.ASGITransport`, or on a port).

It is hostile the ways the real service is. It bills a request the moment it accepts it, so a
client that gives up waiting is still charged (and the simulator says how much was billed
unseen). Rate limits are rolling windows per second and per minute, refused with the real
"(actual/limit)" texts and no Retry-After; `x-ratelimit-*` headers come on successful replies
only. Credit exhaustion is 403. Some error bodies are plain text. A reply can lack
`cost_in_usd_ticks`. The prepaid balance falls after a billing lag, so a run overshoots.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from knrun.sim import replies
from knrun.sim.asgi import (
    Receive,
    Request,
    Response,
    Scope,
    Send,
    handle_lifespan,
    read_request,
    send_response,
)
from knrun.sim.batch import BatchService
from knrun.sim.management import Management
from knrun.sim.ratelimit import RateLimiter
from knrun.sim.scenario import Scenario, SimModel

TICKS_PER_CENT = 10**8
_MODEL = re.compile(r"^/v1/language-models/(?P<model>[^/]+)$")
_REASONING_REJECTS = ("presence_penalty", "frequency_penalty", "stop")
FORCEABLE = (
    "rate_limited",
    "server_error",
    "credit_exhausted",
    "malformed_json",
    "truncated",
    "refusal",
    "missing_cost",
    "schema_refused",
)
_RANDOM_FAULTS = ("rate_limited", "server_error", "malformed_json", "truncated", "refusal")
Disconnected = Callable[[], Awaitable[None]]


@dataclass
class XaiStats:
    chat_requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    billed_ticks: int = 0  # everything charged, whether or not the reply reached the client
    abandoned_requests: int = 0  # accepted and billed, but the client left before the reply
    abandoned_ticks: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    paid_by_prompt: Counter[str] = field(default_factory=Counter)  # paid requests per prompt
    latencies: list[float] = field(default_factory=list)  # simulated seconds, unscaled
    arrivals: list[float] = field(default_factory=list)  # clock time of each chat request
    answered: list[tuple[float, str]] = field(default_factory=list)  # (clock time, outcome)
    admitted: list[float] = field(default_factory=list)  # clock time of each accepted request

    @property
    def paid_requests(self) -> int:
        return sum(self.paid_by_prompt.values())

    @property
    def delivered_ticks(self) -> int:
        return self.billed_ticks - self.abandoned_ticks


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """Identifies a unit's request by its user message (the part that differs per unit)."""
    user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
    return hashlib.sha256(str(user).encode()).hexdigest()[:16]


class XaiSimulator:
    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.scenario = scenario or Scenario()
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random(self.scenario.seed)  # noqa: S311 - simulation, not secrets
        self.balance_ticks = int(self.scenario.balance_usd * 100) * TICKS_PER_CENT
        self.purchased_ticks = self.balance_ticks
        self._unsettled: deque[tuple[float, int]] = deque()  # (due time, ticks)
        self._conversations: set[str] = set()
        self.forced: deque[str] = deque()
        self.stats = XaiStats()
        self.limits = RateLimiter(self.scenario.limits, clock, self.scenario.latency.time_scale)
        self.management = Management(self)
        self.batch = BatchService(self)

    # -- for tests and the demo -------------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self)

    def force(self, outcome: str, count: int = 1) -> None:
        """The next `count` chat requests get `outcome`, whatever the random faults say."""
        if outcome not in FORCEABLE:
            raise ValueError(f"unknown outcome {outcome!r}; one of {', '.join(FORCEABLE)}")
        self.forced.extend([outcome] * count)

    def settled_balance_ticks(self) -> int:
        """What the ledger shows now: costs older than the billing lag are charged."""
        now = self._clock()
        while self._unsettled and self._unsettled[0][0] <= now:
            self.balance_ticks -= self._unsettled.popleft()[1]
        return self.balance_ticks

    def charge(self, ticks: int) -> None:
        """Bill `ticks` now; the prepaid balance shows it after the billing lag."""
        self.stats.billed_ticks += ticks
        lag = self.scenario.billing_lag_s * self.scenario.latency.time_scale
        self._unsettled.append((self._clock() + lag, ticks))

    # -- shared with the Batch API ----------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    async def pause(self, simulated_s: float) -> None:
        await self._sleep(simulated_s * self.scenario.latency.time_scale)

    def chance(self) -> float:
        """A uniform draw in [0, 1) from the scenario's seeded randomness."""
        return self._rng.random()

    def credit_refusal(self) -> Response:
        return self.management.credit_exhausted()

    # -- ASGI -------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await handle_lifespan(receive, send)
            return
        request = await read_request(scope, receive)

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        await send_response(send, await self.handle(request, disconnected))

    async def handle(self, request: Request, disconnected: Disconnected | None = None) -> Response:
        path = request.path.rstrip("/")
        if path.startswith("/v1/billing/"):
            return self.management.handle(request, path)
        if request.bearer() is None:
            return _error(401, "unauthenticated", "No API key provided. Send it as a Bearer token.")
        if request.bearer() != self.scenario.api_key:
            return _error(
                400,
                "invalid-argument",
                "Incorrect API key provided: "
                f"{_mask(request.bearer() or '')}. You can obtain an API key from "
                "https://console.x.ai.",
            )
        if request.method == "POST" and path == "/v1/chat/completions":
            return await self._chat(request, disconnected)
        if path == "/v1/batches" or path.startswith("/v1/batches/"):
            return await self.batch.handle(request, path)
        if request.method == "GET":
            return self._get(path)
        return _error(404, "not-found", f"No handler for {request.method} {path}")

    def _get(self, path: str) -> Response:
        if path == "/v1/language-models":
            return Response.json(200, {"models": [_model_entry(m) for m in self._listed()]})
        if match := _MODEL.match(path):
            model = self.scenario.model(match["model"])
            if model is None or not model.listed:
                return self._model_missing(match["model"])
            return Response.json(200, _model_entry(model))
        if path == "/v1/models":  # the OpenAI-compatible list
            data = [
                {"id": m.id, "object": "model", "created": 1_767_225_600, "owned_by": "xai"}
                for m in self._listed()
            ]
            return Response.json(200, {"object": "list", "data": data})
        if path == "/v1/api-key":
            return Response.json(200, self.management.api_key())
        return _error(404, "not-found", f"No handler for GET {path}")

    # -- chat -------------------------------------------------------------------------------------

    async def _chat(self, request: Request, disconnected: Disconnected | None) -> Response:
        self.stats.chat_requests += 1
        self.stats.arrivals.append(self._clock())
        self.management.other_spender_acts(self.stats.chat_requests)
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
            return self._outcome("bad_request", _error(400, "invalid-argument", too_long))
        outcome = self.pick_outcome()
        window = self.limits.for_model(model.id)
        if outcome == "rate_limited":
            return self._outcome(outcome, self._rate_limited(_rate_text(self, model.id)))
        if message := window.refusal(self.scenario.team_id, model.id, usage.prompt):
            return self._outcome("rate_limited", self._rate_limited(message))
        if outcome == "schema_refused":  # a refusal that mentions credit, and is not about it
            text = (
                "Invalid response_format: the JSON schema's property 'credit_points' has an "
                "unsupported type 'decimal'."
            )
            return self._outcome("bad_request", _error(400, "invalid-argument", text))
        if outcome == "credit_exhausted" or self.settled_balance_ticks() <= 0:
            return self._outcome("credit_exhausted", self.management.credit_exhausted())
        if outcome == "server_error":
            unavailable = "The service is temporarily unavailable. Please try again."
            return self._outcome(outcome, _error(503, "unavailable", unavailable))
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
        problem = _parameter_problem(model, body)
        if problem is not None:
            return (
                self._outcome("bad_request", _error(400, "invalid-argument", problem)),
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
        for name in _RANDOM_FAULTS:
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

    # -- refusals ---------------------------------------------------------------------------------

    def _listed(self) -> list[SimModel]:
        return [m for m in self.scenario.models if m.listed]

    def _model_missing(self, name: str) -> Response:
        return _error(
            404,
            "not-found",
            f"The model {name} does not exist or your team "
            f"{self.scenario.team_id} does not have access to it.",
        )

    def _rate_limited(self, message: str) -> Response:
        retry = self.scenario.faults.retry_after_s
        scale = self.scenario.latency.time_scale
        headers = {} if retry is None else {"retry-after": f"{retry * scale:g}"}
        return _error(429, "resource-exhausted", message, headers)


def _rate_text(sim: XaiSimulator, model: str) -> str:
    """The text of a 429 injected beyond the windows (a busy shared cluster, say)."""
    return (
        f"Too many requests for team {sim.scenario.team_id} and model {model}. "
        "Requests per Second (actual/limit): 31/30."
    )


def _parameter_problem(model: SimModel, body: dict[str, Any]) -> str | None:
    if model.reasoning:
        for parameter in _REASONING_REJECTS:
            if parameter in body:
                camel = re.sub(r"_(\w)", lambda m: m[1].upper(), parameter)
                return f"Model {model.id} does not support parameter {camel}."
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not model.efforts:
            return f"Model {model.id} does not support parameter reasoningEffort."
        if effort not in model.efforts:
            return f"Argument not supported: reasoning_effort={effort}"
    return None


def _model_entry(model: SimModel) -> dict[str, Any]:
    return {
        "id": model.id,
        "fingerprint": model.fingerprint,
        "created": 1_767_225_600,
        "object": "model",
        "owned_by": "xai",
        "version": model.version,
        "input_modalities": ["text"],
        "output_modalities": ["text"],
        "prompt_text_token_price": model.ticks_per_token("input"),
        "cached_prompt_text_token_price": model.ticks_per_token("cached_input"),
        "prompt_image_token_price": 0,
        "completion_text_token_price": model.ticks_per_token("output"),
        "long_context_threshold": model.long_context_threshold,
        "prompt_text_token_price_long_context": model.ticks_per_token("input_long"),
        "cached_prompt_text_token_price_long_context": model.ticks_per_token("cached_input_long"),
        "completion_text_token_price_long_context": model.ticks_per_token("output_long"),
        "search_price": 0,
        "aliases": model.aliases,
    }


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response.json(status, {"code": code, "error": message}, headers)


def _mask(key: str) -> str:
    return f"{key[:2]}***{key[-2:]}" if len(key) > 4 else "***"
