"""`knrun preflight`: the pre-run checklist as a flow. Each step is judged by `steps.py` and shown
as it completes; the first failure ends the checklist (so nothing is spent after it) and no
receipt is written.

1 model current · 2 prices true · 3 estimate · 4 balance · 5 canary · 6 receipt
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from knrun import estimate as estimates
from knrun.commands.preflight import issuing, steps
from knrun.commands.preflight.steps import MARGIN, CanaryFigures, Finding, Overshoot, Step
from knrun.context import STATE_DIR, Context, xai_client
from knrun.errors import ConfigError, ExitCode
from knrun.pricing import ModelPrice, PricingTable
from knrun.receipt import Receipt, save_receipt
from knrun.run.config import DEFAULT_MAX_CONCURRENCY
from knrun.store.base import SqlUnitStore
from knrun.store.types import Progress
from knrun.xai import LiveModel, XaiClient, XaiError, find_live

Report = Callable[[Step], None]
RETRY_OVERSHOOT_TICKS = 5 * 10**10  # $5: retry's own cap bounds what it has in flight
Canary = Callable[[int, int], Awaitable[CanaryFigures]]  # (units, estimated ticks per unit)


@dataclass
class Options:
    canary: int = 10
    sample: int = 500  # prompts rendered to measure input tokens
    # USD allowed past the balance: billing lags, so requests in flight when the credit runs
    # out are billed past it. None: the planned concurrency at the worst case per unit.
    overshoot_ticks: int | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY  # what go may have in flight, planned
    attested_balance_ticks: int | None = None  # --balance, when there is no management key
    max_age_days: int = 7
    concurrency: int = 10  # the canary's
    batch: bool = False  # also a batch canary, for `go --batch`


@dataclass
class Outcome:
    steps: list[Step]
    estimate: estimates.Estimate | None = None
    receipt: Receipt | None = None
    exit_code: ExitCode = ExitCode.OK

    @property
    def failed(self) -> Step | None:
        return next((step for step in self.steps if not step.ok), None)


@dataclass(frozen=True)
class Balance:
    ticks: int | None
    source: str  # management-api | attested | unreadable | missing
    warnings: list[Finding]


class Preflight:
    def __init__(
        self,
        ctx: Context,
        pricing: PricingTable,
        options: Options,
        report: Report,
        canary: Canary | None = None,
        batch_canary: Canary | None = None,
    ) -> None:
        self.ctx, self.pricing, self.options = ctx, pricing, options
        self.job = ctx.job
        self._report = report
        self._canary = canary
        self._batch_canary = batch_canary
        self.steps: list[Step] = []

    async def run(self) -> Outcome:
        """The whole checklist: spends only on the canary, and only after steps 1 to 4 pass."""
        if self._canary is None:
            raise ValueError("the full checklist needs a canary")
        async with self.ctx.open_store() as store:
            xai = xai_client(self.ctx.settings, max_connections=2)
            try:
                return await self._run(store, xai)
            finally:
                await xai.aclose()

    async def for_retry(self, cap_ticks: int) -> Outcome:
        """`knrun retry`'s checks: model current, prices true, and a balance that covers the
        retry's own spend cap (no estimate beyond the cap, no canary, no receipt)."""
        xai = xai_client(self.ctx.settings, max_connections=2)
        try:
            if not await self._model_and_prices(xai):
                return self._failed()
            balance = await self._balance(xai)
            if not self._step(self._balance_step(cap_ticks, balance, None, margin=1)):
                return self._failed()
            return Outcome(self.steps)
        finally:
            await xai.aclose()

    async def _run(self, store: SqlUnitStore, xai: XaiClient) -> Outcome:
        if not await self._model_and_prices(xai):
            return self._failed()
        price = self.pricing.price_for(self.job.model)
        estimate = await self._estimate(store, price)
        self._step(steps.estimate_step(estimate, price))
        if estimate.remaining == 0:
            return Outcome(self.steps, estimate)
        balance = await self._balance(xai)
        step = self._balance_step(estimate.total_ticks, balance, estimate)
        if not self._step(step):
            return self._failed(estimate)
        assert self._canary is not None and balance.ticks is not None
        figures = await self._canary(self.options.canary, estimate.unit_ticks)
        revised = self._re_estimate(await store.progress(), figures, estimate, price)
        if not self._step(steps.canary_step(figures, estimate, revised, self.job.timeout_s)):
            code = figures.exit_code if figures.exit_code != ExitCode.OK else ExitCode.USAGE
            return self._failed(estimate, code)
        again = Balance(balance.ticks, balance.source, [])
        step = self._balance_step(revised.total_ticks, again, revised, again=True)
        if not self._step(step):
            return self._failed(revised)
        batch: dict[str, Any] = {}
        if self.options.batch:
            step = await self._batch_step(price, revised)
            if not self._step(step):
                return self._failed(revised, step.figures.get("exit_code", ExitCode.USAGE))
            batch = issuing.batch_verdict(step)
        receipt = issuing.build(
            self.ctx, self.steps, revised, price, (balance.ticks, balance.source), figures
        )
        receipt.max_concurrency = self.options.max_concurrency
        receipt.batch = batch
        await issuing.record(store, receipt)
        path = save_receipt(STATE_DIR, self.job, receipt)
        figures_6 = {
            "path": str(path),
            "approved": receipt.approved_ticks,
            "units": revised.remaining,
        }
        self._step(Step(7 if self.options.batch else 6, "receipt", True, figures_6))
        return Outcome(self.steps, revised, receipt)

    async def _batch_step(self, price: ModelPrice, estimate: estimates.Estimate) -> Step:
        """A few units through the Batch API, waited for: accepted, and billed as priced."""
        try:
            batch_price = price.for_batch()
        except ConfigError as exc:
            return steps.batch_canary_step(None, price, str(exc))
        assert self._batch_canary is not None
        unit = batch_price.estimate_ticks(
            round(estimate.input_tokens), round(estimate.output_tokens)
        )
        figures = await self._batch_canary(self.options.canary, unit)
        step = steps.batch_canary_step(figures, price, None)
        if figures.exit_code != ExitCode.OK:
            step.figures["exit_code"] = figures.exit_code
        return step

    def _step(self, step: Step) -> bool:
        self.steps.append(step)
        self._report(step)
        return step.ok

    def _failed(
        self, estimate: estimates.Estimate | None = None, code: ExitCode = ExitCode.USAGE
    ) -> Outcome:
        return Outcome(self.steps, estimate, None, code)

    async def _model_and_prices(self, xai: XaiClient) -> bool:
        live = await xai.language_models()
        listed: LiveModel | None = find_live(live, self.job.model)
        model = steps.model_current(self.job.model, self.job.reasoning_effort, listed, self.pricing)
        if not self._step(model):
            return False
        price = self.pricing.price_for(self.job.model)
        today = datetime.now(UTC).date()
        return self._step(
            steps.prices_true(
                self.job.model, price, live, self.pricing, today, self.options.max_age_days
            )
        )

    async def _estimate(self, store: SqlUnitStore, price: ModelPrice) -> estimates.Estimate:
        progress = await store.progress()
        estimate = estimates.build(
            job=self.job,
            price=price,
            pricing=self.pricing,
            # Units already in open batches are bought: `knrun batch collect` writes them.
            remaining=progress.remaining - progress.in_batches,
            sample=await store.sample_remaining(self.options.sample),
            output=estimates.output_tokens(self.job, progress),
        )
        return replace(estimate, in_batches=progress.in_batches)

    async def _balance(self, xai: XaiClient) -> Balance:
        if not xai.has_management_key:
            if self.options.attested_balance_ticks is None:
                return Balance(None, "missing", [])
            return Balance(self.options.attested_balance_ticks, "attested", [])
        try:
            team = await xai.team(self.ctx.settings.xai_team_id)
            ticks = await xai.prepaid_balance_ticks(team)
        except XaiError as exc:
            return Balance(None, "unreadable", [Finding("management_api", {"error": str(exc)})])
        warnings = []
        try:
            limit = await xai.spending_limit_ticks(team)
        except XaiError as exc:
            warnings.append(Finding("limit_unknown", {"error": str(exc)}))
        else:
            if limit:
                warnings.append(Finding("spending_limit", {"limit": limit}))
        return Balance(ticks, "management-api", warnings)

    def _balance_step(
        self,
        total: int,
        balance: Balance,
        estimate: estimates.Estimate | None,
        *,
        again: bool = False,
        margin: Decimal | int = MARGIN,
    ) -> Step:
        return steps.balance_step(
            total,
            balance.ticks,
            balance.source,
            balance.warnings,
            self._overshoot(estimate),
            again=again,
            margin=margin,
        )

    def _overshoot(self, estimate: estimates.Estimate | None) -> Overshoot:
        """What may be billed past the balance: every request in flight when the credit runs
        out (as many as go may have, or units left), at the worst case per unit (twice its
        estimate, as the spend cap counts it)."""
        if self.options.overshoot_ticks is not None:
            return Overshoot(self.options.overshoot_ticks)
        if estimate is None:  # retry: its cap bounds what is in flight
            return Overshoot(RETRY_OVERSHOOT_TICKS)
        in_flight = max(1, min(self.options.max_concurrency, estimate.remaining))
        worst = 2 * estimate.unit_ticks
        return Overshoot(in_flight * worst, in_flight, worst)

    def _re_estimate(
        self,
        after: Progress,
        figures: CanaryFigures,
        estimate: estimates.Estimate,
        price: ModelPrice,
    ) -> estimates.Estimate:
        """Real averages replace guesses: every finished unit at this version, the canary's
        included (the canary alone on a first preflight; more data on every later one)."""
        if (
            after.done
            and after.avg_input_tokens is not None
            and after.avg_output_tokens is not None
        ):
            tokens = (after.avg_input_tokens, after.avg_output_tokens)
            source = f"average of {after.done} finished units, canary included"
        else:
            tokens = (
                figures.input_tokens or estimate.input_tokens,
                figures.output_tokens or estimate.output_tokens,
            )
            source = f"canary of {figures.units} units"
        return estimates.priced(
            self.job, price, self.pricing, after.remaining, estimate.sampled, *tokens, source
        )
