"""`pricing.toml` against the live price list: the comparison (`pricing check`, preflight step 2)
and the rewrite (`pricing sync`), which keeps the file's comments and every other entry."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path

import tomlkit
from tomlkit.items import Table

from knrun.pricing import ModelPrice, PricingTable, format_price
from knrun.xai import LiveModel, find_live

TOLERANCE = Decimal("0.01")  # 1%
MAX_AGE_DAYS = 7
LIVE_KINDS = ("input", "cached_input", "output")  # the live list has no batch prices
LONG_KINDS = ("input_long", "cached_input_long", "output_long")


def compared_kinds(price: ModelPrice, live: LiveModel) -> tuple[str, ...]:
    """The prices to compare: long-context ones too when either side has that tier."""
    if live.long_context_threshold or price.long_context_threshold:
        return LIVE_KINDS + LONG_KINDS
    return LIVE_KINDS


@dataclass(frozen=True)
class PriceRow:
    model: str
    kind: str
    file: Decimal
    live: Decimal | None
    ok: bool


@dataclass
class PriceCheck:
    rows: list[PriceRow] = field(default_factory=list)
    found: list[tuple[str, str]] = field(default_factory=list)  # (model, problem): any fails
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [text for _, text in self.found]

    def problems_for(self, models: set[str]) -> list[str]:
        return [text for model, text in self.found if model in models]

    @property
    def ok(self) -> bool:
        return not self.found


def differs(file: Decimal, live: Decimal, tolerance: Decimal = TOLERANCE) -> bool:
    if live == 0:
        return file != 0
    return abs(file - live) / live > tolerance


def price_entry(pricing: PricingTable, name: str, live: LiveModel | None) -> ModelPrice | None:
    """The file's entry for a model named by id or alias."""
    for candidate in [name, *(sorted(live.names()) if live else [])]:
        if candidate in pricing.models:
            return pricing.models[candidate]
    return None


def check_prices(
    pricing: PricingTable,
    live: Sequence[LiveModel],
    *,
    job_model: str | None,
    today: date,
    max_age_days: int = MAX_AGE_DAYS,
) -> PriceCheck:
    result = PriceCheck()
    if job_model is not None:
        _check_job_model(result, pricing, live, job_model)
    for name, price in sorted(pricing.models.items()):
        if price.provider != "xai":
            result.notes.append(f"{name}: {price.provider} model, not checked against xAI")
            continue
        live_model = find_live(live, name)
        if live_model is None:
            if name != job_model:
                result.notes.append(f"{name}: not on the live list (retired? add it to [retired])")
            continue
        _check_model(result, pricing, name, price, live_model)
        age = (today - price.verified_at).days
        if age > max_age_days:
            result.found.append(
                (
                    name,
                    f"{name}: verified_at {price.verified_at} is {age} days old "
                    f"(limit {max_age_days})",
                )
            )
    for name in sorted(pricing.retired):
        if find_live(live, name):
            result.notes.append(f"{name}: in [retired] but still on the live list")
    if job_model is not None and job_model in pricing.models:
        result.notes.append(_batch_note(pricing.models[job_model]))
    return result


def stale_entries(
    pricing: PricingTable, today: date, max_age_days: int = MAX_AGE_DAYS
) -> dict[str, date]:
    """The xAI models whose `verified_at` is older than `pricing check` allows, with that date."""
    return {
        name: price.verified_at
        for name, price in sorted(pricing.models.items())
        if price.provider == "xai" and (today - price.verified_at).days > max_age_days
    }


def _batch_note(price: ModelPrice) -> str:
    """The live list carries no batch prices: say so, rather than let a check look complete."""
    if not price.has_batch_prices:
        return (
            f"{price.model}: no batch prices in pricing.toml, so `go --batch` will not run it "
            "(the Batch API's discount varies by model, and some models are refused)"
        )
    return (
        f"{price.model}: batch prices (${price.batch_input} in, ${price.batch_output} out per "
        "1M) cannot be verified from the live list; `knrun preflight --batch` measures them "
        "against a real batch"
    )


def _check_job_model(
    result: PriceCheck, pricing: PricingTable, live: Sequence[LiveModel], job_model: str
) -> None:
    live_job = find_live(live, job_model)
    if job_model in pricing.retired or (live_job and live_job.id in pricing.retired):
        result.found.append((job_model, f"job model {job_model} is in [retired]: do not run it"))
    if live_job is None:
        result.found.append(
            (
                job_model,
                f"job model {job_model} is not on the live list: retired, misspelt, "
                "or this key cannot use it",
            )
        )
    elif price_entry(pricing, job_model, live_job) is None:
        result.found.append((job_model, f"job model {job_model} is not in {pricing.path}"))


def _check_model(
    result: PriceCheck, pricing: PricingTable, name: str, price: ModelPrice, live: LiveModel
) -> None:
    """One priced model's figures against its live entry."""
    if price.long_context_threshold != live.long_context_threshold:
        result.found.append(
            (
                name,
                f"{name} long_context_threshold: {pricing.path} says "
                f"{price.long_context_threshold:,} tokens, live "
                f"{live.long_context_threshold:,} (0 = no long-context tier)",
            )
        )
    for kind in compared_kinds(price, live):
        file_value = getattr(price, kind) or Decimal(0)
        live_value = getattr(live, kind)
        ok = not differs(file_value, live_value)
        result.rows.append(PriceRow(name, kind, file_value, live_value, ok))
        if not ok:
            ratio = f" ({live_value / file_value:.1f}x)" if file_value else ""
            result.found.append(
                (
                    name,
                    f"{name} {kind}: {pricing.path} says ${format_price(file_value)}/M, "
                    f"live ${format_price(live_value)}/M{ratio}",
                )
            )


@dataclass
class SyncResult:
    before: str
    after: str
    updated: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def diff(self, path: Path) -> str:
        return "".join(
            difflib.unified_diff(
                self.before.splitlines(keepends=True),
                self.after.splitlines(keepends=True),
                fromfile=f"{path} (before)",
                tofile=f"{path} (live)",
            )
        )


def sync_prices(
    pricing: PricingTable,
    live: Sequence[LiveModel],
    *,
    job_model: str | None,
    today: date,
    source: str,
) -> SyncResult:
    """The file's text with live prices and today's date for every xAI model on the live list,
    plus the job's model if it is live but missing. Comments and other entries are kept."""
    before = pricing.path.read_text(encoding="utf-8")
    document = tomlkit.parse(before)
    models = document.setdefault("models", tomlkit.table(is_super_table=True))
    result = SyncResult(before=before, after=before)
    for name, price in sorted(pricing.models.items()):
        live_model = find_live(live, name)
        if price.provider != "xai" or live_model is None:
            continue
        if _write_prices(models[name], live_model, today, source, current=price):
            result.updated.append(name)
            if price.has_batch_prices:
                result.warnings.append(
                    f"{name}: standard prices changed; batch prices are not on the live list, "
                    "check them on the provider's models page"
                )
    if job_model is not None:
        live_job = find_live(live, job_model)
        if live_job is None:
            result.warnings.append(f"job model {job_model} is not on the live list: not added")
        elif price_entry(pricing, job_model, live_job) is None:
            entry = tomlkit.table()
            _write_prices(entry, live_job, today, source, current=None)
            entry.comment("added by knrun pricing sync; batch prices unknown")
            entry.add(tomlkit.nl())
            models[live_job.id] = entry
            result.added.append(live_job.id)
    result.after = tomlkit.dumps(document)
    return result


def _write_prices(
    entry: Table, live: LiveModel, today: date, source: str, current: ModelPrice | None
) -> bool:
    """Set the live prices that differ (so unchanged lines stay as written) and the date.
    Returns whether any price changed."""
    changed = False
    kinds = LIVE_KINDS + LONG_KINDS if live.long_context_threshold else LIVE_KINDS
    for kind in kinds:
        value = getattr(live, kind)
        if current is None or getattr(current, kind) != value:
            # At most 4 decimals, which a float prints back exactly ("0.2", "0.05").
            entry[kind] = float(value)
            changed = True
    had_tier = current is not None and current.long_context_threshold
    if live.long_context_threshold or had_tier:
        if current is None or current.long_context_threshold != live.long_context_threshold:
            entry["long_context_threshold"] = live.long_context_threshold
            changed = True
        if not live.long_context_threshold:  # the tier is gone: so are its prices
            for kind in LONG_KINDS:
                entry.pop(kind, None)
    if changed:
        entry["source"] = source
    entry["verified_at"] = today
    return changed and current is not None
