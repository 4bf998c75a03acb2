"""`knrun preflight`: the pre-run checklist as code. Each step passes or fails with its figures;
the first failure ends the checklist (so nothing is spent after it) and no receipt is written.

1 model current · 2 prices true · 3 estimate · 4 balance · 5 canary · 6 receipt
"""

from __future__ import annotations

import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from knrun import estimate as estimates
from knrun.context import STATE_DIR, Context, xai_client
from knrun.errors import ExitCode, KnrunError
from knrun.judge import utc_now
from knrun.lock import new_run_id
from knrun.pricecheck import check_prices
from knrun.pricing import ModelPrice, PricingTable, format_price, format_usd
from knrun.receipt import Receipt, save_receipt
from knrun.store.base import SqlUnitStore
from knrun.store.types import Progress, RunRecord
from knrun.xai import LiveModel, XaiClient, XaiError, find_live

MARGIN = Decimal("1.15")  # balance must cover the estimate plus 15%
CANARY_VALID = Decimal("0.9")  # at least 9 of 10 replies must validate
CANARY_COST_TOLERANCE = Decimal("0.20")  # per-unit cost within 20% of the estimate
CANARY_BILLING_TOLERANCE = Decimal("0.02")  # tracked within 2% of billed


@dataclass
class Options:
    canary: int = 10
    sample: int = 500  # prompts rendered to measure input tokens
    overshoot_ticks: int = 5 * 10**10  # billing lags at high concurrency: $5 of allowance
    attested_balance_ticks: int | None = None  # --balance, when there is no management key
    max_age_days: int = 7
    concurrency: int = 10  # the canary's


@dataclass
class Step:
    number: int
    title: str
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    steps: list[Step]
    estimate: estimates.Estimate | None = None
    receipt: Receipt | None = None
    exit_code: ExitCode = ExitCode.OK


Report = Callable[[Step], None]
Canary = Callable[[int, int], Awaitable["CanaryFigures"]]  # (units, estimated ticks per unit)


@dataclass(frozen=True)
class CanaryFigures:
    """What the canary run produced, as preflight judges it."""

    run_id: str
    units: int
    valid: int
    billed_ticks: int
    tracked_ticks: int  # of the replies that carried a bill, so it compares with billed_ticks
    input_tokens: float  # per valid unit, from real usage
    output_tokens: float
    exit_code: ExitCode
    reason: str
    unbilled_replies: int = 0  # replies without cost_in_usd_ticks: their price is unproven
    possibly_billed: int = 0  # requests that timed out or were dropped after sending


class Preflight:
    def __init__(
        self, ctx: Context, pricing: PricingTable, options: Options, report: Report, canary: Canary
    ) -> None:
        self.ctx, self.pricing, self.options = ctx, pricing, options
        self.job = ctx.job
        self._report = report
        self._canary = canary
        self.steps: list[Step] = []

    def _step(self, step: Step) -> bool:
        self.steps.append(step)
        self._report(step)
        return step.ok

    async def run(self) -> Outcome:
        store = self.ctx.open_store()
        xai = xai_client(self.ctx.settings, max_connections=2)
        try:
            return await self._run(store, xai)
        finally:
            await xai.aclose()
            await store.close()

    async def for_retry(self, cap_ticks: int) -> Outcome:
        """`knrun retry`'s checks: model current, prices true, and a balance that covers the
        retry's own spend cap (no estimate beyond the cap, no canary, no receipt)."""
        xai = xai_client(self.ctx.settings, max_connections=2)
        try:
            live = await xai.language_models()
            if not self._step(self._model_current(find_live(live, self.job.model))):
                return self._failed()
            if not self._step(self._prices_true(live)):
                return self._failed()
            balance, source, warnings = await self._balance(xai)
            step = self._balance_step(cap_ticks, balance, source, warnings, margin=Decimal(1))
            if not self._step(step):
                return self._failed()
            return Outcome(self.steps)
        finally:
            await xai.aclose()

    async def _run(self, store: SqlUnitStore, xai: XaiClient) -> Outcome:
        live = await xai.language_models()
        live_model = find_live(live, self.job.model)
        if not self._step(self._model_current(live_model)):
            return self._failed()
        price = self._price()
        if not self._step(self._prices_true(live)):
            return self._failed()
        progress = await store.progress()
        sample = await store.sample_remaining(self.options.sample)
        estimate = estimates.build(
            job=self.job,
            price=price,
            pricing=self.pricing,
            remaining=progress.remaining,
            sample=sample,
            output=estimates.output_tokens(self.job, progress),
        )
        self._step(self._estimate_step(estimate, price))
        if estimate.remaining == 0:
            return Outcome(self.steps, estimate)
        balance, source, warnings = await self._balance(xai)
        if not self._step(self._balance_step(estimate.total_ticks, balance, source, warnings)):
            return self._failed(estimate)
        assert balance is not None
        figures = await self._canary(self.options.canary, estimate.unit_ticks)
        revised = self._re_estimate(await store.progress(), figures, estimate, price)
        canary_step = self._canary_step(figures, estimate, revised)
        if not self._step(canary_step):
            code = figures.exit_code if figures.exit_code != ExitCode.OK else ExitCode.USAGE
            return self._failed(estimate, code)
        recheck = self._balance_step(revised.total_ticks, balance, source, [], again=True)
        if not self._step(recheck):
            return self._failed(revised)
        receipt = self._receipt(revised, price, balance, source, figures)
        await self._record(store, receipt)
        path = save_receipt(STATE_DIR, self.job, receipt)
        self._step(
            Step(
                6,
                "receipt",
                True,
                f"{path}: valid 24 h; approved spend "
                f"{format_usd(receipt.approved_ticks, 2)} for {revised.remaining:,} units",
            )
        )
        return Outcome(self.steps, revised, receipt)

    def _failed(
        self, estimate: estimates.Estimate | None = None, code: ExitCode = ExitCode.USAGE
    ) -> Outcome:
        return Outcome(self.steps, estimate, None, code)

    def _price(self) -> ModelPrice:
        return self.pricing.price_for(self.job.model)

    # -- 1 and 2 ----------------------------------------------------------------------------------

    def _model_current(self, live: LiveModel | None) -> Step:
        model = self.job.model
        if live is None:
            return Step(
                1,
                "model current",
                False,
                f"{model} is not on the live model list: "
                "retired, misspelt, or this key cannot use it. Do not run it.",
            )
        if model in self.pricing.retired or live.id in self.pricing.retired:
            return Step(
                1, "model current", False, f"{model} is listed as retired in {self.pricing.path}"
            )
        try:
            self.pricing.price_for(model)
        except KnrunError as exc:
            return Step(1, "model current", False, str(exc))
        aliases = ", ".join(live.aliases) or "none"
        effort = self.job.reasoning_effort or "not sent (the model's default)"
        return Step(
            1,
            "model current",
            True,
            f"{live.id} (aliases: {aliases}; "
            f"fingerprint {live.fingerprint or '-'}; version {live.version or '-'})",
            details=[f"reasoning_effort: {effort}"],
        )

    def _prices_true(self, live: list[LiveModel]) -> Step:
        today = datetime.now(UTC).date()
        check = check_prices(
            self.pricing,
            live,
            job_model=self.job.model,
            today=today,
            max_age_days=self.options.max_age_days,
        )
        price = self._price()
        names = {self.job.model, price.model}  # the job may name an alias of the priced id
        mine = check.problems_for(names)
        others = [p for p in check.problems if p not in mine]
        rows = [r for r in check.rows if r.model in names]
        figures = ", ".join(
            f"{r.kind} ${format_price(r.file)} (live ${format_price(r.live)})"
            for r in rows
            if r.live is not None
        )
        if mine:
            return Step(
                2,
                "prices true",
                False,
                "; ".join(mine),
                details=[
                    "fix: read the live prices, then "
                    f"`knrun pricing sync --pricing {self.pricing.path}`"
                ],
            )
        return Step(
            2,
            "prices true",
            True,
            f"{figures} per 1M; verified {price.verified_at}",
            warnings=[f"other model: {p}" for p in others],
        )

    # -- 3 and 4 ----------------------------------------------------------------------------------

    def _estimate_step(self, estimate: estimates.Estimate, price: ModelPrice) -> Step:
        if estimate.remaining == 0:
            return Step(3, "estimate", True, "0 units remain at this version: nothing to run")
        batch = (
            f"; batch {format_usd(estimate.batch_total_ticks, 2)}"
            if estimate.batch_total_ticks is not None
            else ""
        )
        sampled = (
            f"all {estimate.sampled:,}"
            if estimate.sampled >= estimate.remaining
            else f"a sample of {estimate.sampled:,}"
        )
        return Step(
            3,
            "estimate",
            True,
            (
                f"{estimate.remaining:,} units x {format_usd(estimate.unit_ticks, 6)} = "
                f"{format_usd(estimate.total_ticks, 2)} standard{batch}"
            ),
            details=[
                f"input {estimate.input_tokens:,.0f} tokens/unit (rendered {sampled} prompts); "
                f"output {estimate.output_tokens:,.0f} tokens/unit ({estimate.output_source})",
                f"totals: {estimate.total_input_tokens:,} input + {estimate.total_output_tokens:,} "
                f"output tokens at ${price.input}/${price.output} per 1M",
            ],
        )

    async def _balance(self, xai: XaiClient) -> tuple[int | None, str, list[str]]:
        warnings: list[str] = []
        if not xai.has_management_key:
            if self.options.attested_balance_ticks is None:
                return None, "missing", warnings
            return self.options.attested_balance_ticks, "attested", warnings
        try:
            team = await xai.team(self.ctx.settings.xai_team_id)
            balance = await xai.prepaid_balance_ticks(team)
        except XaiError as exc:
            warnings.append(f"management API: {exc}")
            return None, "unreadable", warnings
        try:
            limit = await xai.spending_limit_ticks(team)
        except XaiError as exc:
            warnings.append(f"spending limit unknown ({exc})")
        else:
            if limit:
                warnings.append(
                    f"the team's monthly spending limit ({format_usd(limit, 2)}) lets spend go on "
                    "past prepaid credit; knrun's spend cap still stops the run"
                )
        return balance, "management-api", warnings

    def _balance_step(
        self,
        total: int,
        balance: int | None,
        source: str,
        warnings: list[str],
        *,
        again: bool = False,
        margin: Decimal = MARGIN,
    ) -> Step:
        title = "balance (re-estimated)" if again else "balance"
        number = 5 if again else 4
        need = math.ceil(total * margin) + self.options.overshoot_ticks
        what = (
            f"estimate {format_usd(total, 2)} x {margin}"
            if margin != 1
            else (f"spend cap {format_usd(total, 2)}")
        )
        rule = (
            f"needs {format_usd(need, 2)} = {what} + "
            f"{format_usd(self.options.overshoot_ticks, 2)} overshoot allowance"
        )
        if source == "missing":
            return Step(
                number,
                title,
                False,
                "unknown: set XAI_MANAGEMENT_KEY (to read it) or "
                "pass --balance USD (recorded as attested)",
                details=[rule],
            )
        if balance is None:
            return Step(
                number, title, False, "could not be read", details=[rule], warnings=warnings
            )
        ok = balance >= need
        word = "covers" if ok else "does NOT cover"
        return Step(
            number,
            title,
            ok,
            f"{format_usd(balance, 2)} ({source}) {word} the run: {rule}",
            warnings=warnings,
        )

    # -- 5 and 6 ----------------------------------------------------------------------------------

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

    def _canary_step(
        self, figures: CanaryFigures, estimate: estimates.Estimate, revised: estimates.Estimate
    ) -> Step:
        n = figures.units
        problems = []
        if figures.exit_code != ExitCode.OK:
            problems.append(f"the canary run stopped: {figures.reason}")
        if n == 0:
            return Step(5, "canary", False, "; ".join(problems) or "no unit ran")
        needed = math.ceil(CANARY_VALID * n)
        if figures.valid < needed:
            problems.append(f"{figures.valid}/{n} replies valid (needs {needed})")
        actual = Decimal(figures.billed_ticks) / n
        off = (
            abs(actual - estimate.unit_ticks) / estimate.unit_ticks
            if estimate.unit_ticks
            else Decimal(0)
        )
        if off > CANARY_COST_TOLERANCE:
            problems.append(
                f"cost per unit {format_usd(int(actual), 6)} vs estimate "
                f"{format_usd(estimate.unit_ticks, 6)} ({off:.0%} off; the next preflight "
                "estimates from these units)"
            )
        gap = (
            abs(Decimal(figures.tracked_ticks - figures.billed_ticks)) / figures.billed_ticks
            if figures.billed_ticks
            else Decimal(0)
        )
        if gap > CANARY_BILLING_TOLERANCE:
            problems.append(
                f"tracked {format_usd(figures.tracked_ticks, 6)} vs billed "
                f"{format_usd(figures.billed_ticks, 6)} ({gap:.1%} apart): pricing.toml is wrong"
            )
        if figures.unbilled_replies:
            problems.append(
                f"{figures.unbilled_replies} of {n} replies carried no cost_in_usd_ticks: what "
                "xAI bills cannot be compared with pricing.toml (a proxy dropping fields?)"
            )
        if figures.possibly_billed:
            problems.append(
                f"{figures.possibly_billed} of {n} requests timed out or were dropped after "
                f"sending (timeout_s = {self.job.timeout_s:g}): they may have been billed unseen"
            )
        summary = (
            f"{figures.valid}/{n} valid; {format_usd(int(actual), 6)}/unit vs estimate "
            f"{format_usd(estimate.unit_ticks, 6)}; tracked {format_usd(figures.tracked_ticks, 6)} "
            f"vs billed {format_usd(figures.billed_ticks, 6)}"
        )
        details = [
            f"re-estimate ({revised.output_source}): {revised.input_tokens:,.0f} in + "
            f"{revised.output_tokens:,.0f} out tokens/unit -> {revised.remaining:,} units x "
            f"{format_usd(revised.unit_ticks, 6)} = {format_usd(revised.total_ticks, 2)}"
        ]
        if problems:
            return Step(5, "canary", False, "; ".join(problems), details=[summary, *details])
        return Step(5, "canary", True, summary, details=details)

    def _receipt(
        self,
        estimate: estimates.Estimate,
        price: ModelPrice,
        balance: int,
        source: str,
        canary: CanaryFigures,
    ) -> Receipt:
        return Receipt(
            job=self.job.name,
            version=self.job.version,
            model=self.job.model,
            prompt_hash=self.job.prompt_hash,
            pricing_fingerprint=price.fingerprint(),
            created_at=utc_now(),
            run_id=new_run_id(),
            remaining_units=estimate.remaining,
            estimate_ticks=estimate.total_ticks,
            estimate_unit_ticks=estimate.unit_ticks,
            approved_ticks=math.ceil(estimate.total_ticks * MARGIN),
            balance_ticks=balance,
            balance_source=source,
            canary={
                "run_id": canary.run_id,
                "units": canary.units,
                "valid": canary.valid,
                "billed_ticks": canary.billed_ticks,
                "tracked_ticks": canary.tracked_ticks,
                "input_tokens_per_unit": round(canary.input_tokens),
                "output_tokens_per_unit": round(canary.output_tokens),
            },
            checks={
                f"{s.number} {s.title}": ("PASS " if s.ok else "FAIL ") + s.summary
                for s in self.steps
            },
        )

    async def _record(self, store: SqlUnitStore, receipt: Receipt) -> None:
        await store.record_run(
            RunRecord(
                run_id=receipt.run_id,
                kind="preflight",
                job=receipt.job,
                version=receipt.version,
                model=receipt.model,
                prompt_hash=receipt.prompt_hash,
                host=socket.gethostname(),
                started_at=receipt.created_at,
                ended_at=receipt.created_at,
                state="finished",
                exit_code=0,
                exit_reason="receipt issued",
                estimate_ticks=receipt.estimate_ticks,
                detail=receipt.to_json(),
            )
        )
