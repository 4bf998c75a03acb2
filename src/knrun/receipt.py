"""The preflight receipt: proof that this job, prompt and pricing passed the checklist recently.

`knrun preflight` writes it (under `.knrun/receipts/` and to the store's runs table); `knrun go`
refuses to spend without one that matches the job's model, prompt hash and pricing, younger than
24 hours.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from knrun.errors import NotAuthorised
from knrun.job import JobSpec
from knrun.pricing import ModelPrice, format_usd

FORMAT = 1
VALID_FOR = timedelta(hours=24)


@dataclass
class Receipt:
    job: str
    version: str
    model: str
    prompt_hash: str
    pricing_fingerprint: str
    created_at: str  # ISO 8601 UTC
    run_id: str
    remaining_units: int
    estimate_ticks: int  # the remaining corpus at standard prices
    estimate_unit_ticks: int
    approved_ticks: int  # estimate x 1.15 + one unit's worst case: the default cap of `go`
    balance_ticks: int | None
    balance_source: str  # management-api | attested
    canary: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)  # step -> PASS/FAIL summary
    # In flight at most, as planned: the balance's overshoot allowance was sized for it, and go
    # keeps to it. None in receipts written before it was recorded.
    max_concurrency: int | None = None
    # The batch canary's verdict (`preflight --batch`): {"accepted", "discount", "run_id", ...}.
    # Empty: not checked, and `go --batch` refuses to run.
    batch: dict[str, Any] = field(default_factory=dict)
    # The store the estimate counted (`d1`, `sqlite:PATH`); None in older receipts.
    store: str | None = None
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def receipt_path(state_dir: Path, job: JobSpec) -> Path:
    return state_dir / "receipts" / f"{job.name}-{job.version}.json"


def save_receipt(state_dir: Path, job: JobSpec, receipt: Receipt) -> Path:
    path = receipt_path(state_dir, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(receipt.to_json(), indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def load_valid_receipt(
    state_dir: Path,
    job: JobSpec,
    price: ModelPrice,
    *,
    now: datetime | None = None,
    store: str | None = None,
) -> Receipt:
    """The receipt that authorises a run of `job` now, on `store`, or NotAuthorised saying why
    not."""
    path = receipt_path(state_dir, job)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        receipt = Receipt(**data)
        created = datetime.fromisoformat(receipt.created_at.replace("Z", "+00:00"))
        if created.tzinfo is None:  # edited by hand without a zone: knrun writes UTC
            created = created.replace(tzinfo=UTC)
    except FileNotFoundError:
        raise NotAuthorised(
            f"no preflight receipt for {job.name} v{job.version}: run `knrun preflight` first"
        ) from None
    except (ValueError, TypeError) as exc:
        raise NotAuthorised(f"{path}: unreadable receipt ({exc}); run `knrun preflight`") from None
    now = now or datetime.now(UTC)
    if receipt.model != job.model:
        raise NotAuthorised(
            f"the job's model changed since preflight ({receipt.model} -> {job.model}): "
            "run `knrun preflight` again"
        )
    if receipt.prompt_hash != job.prompt_hash:
        raise NotAuthorised(
            "the job file changed since preflight (prompt hash "
            f"{receipt.prompt_hash} -> {job.prompt_hash}): run `knrun preflight` again"
        )
    if receipt.pricing_fingerprint != price.fingerprint():
        raise NotAuthorised(
            f"pricing for {job.model} changed since preflight: run `knrun preflight` again"
        )
    if store and receipt.store and receipt.store != store:
        # Settings pasted into .env (`knrun sim serve`'s D1 block, say) can move the store: the
        # approval was for the units of the other one.
        raise NotAuthorised(
            f"the preflight receipt is for store {receipt.store}, but the settings now point at "
            f"{store} (KNRUN_STORE, or the Cloudflare keys in .env): put the store back, or run "
            "`knrun preflight` for this one"
        )
    age = now - created
    if age > VALID_FOR:
        hours = age.total_seconds() / 3600
        raise NotAuthorised(
            f"the preflight receipt is {hours:.0f} h old (valid for 24 h): run `knrun preflight`"
        )
    return receipt


def describe(receipt: Receipt) -> str:
    return (
        f"receipt {receipt.created_at}: {receipt.remaining_units} units, estimate "
        f"{format_usd(receipt.estimate_ticks, 2)}, approved {format_usd(receipt.approved_ticks, 2)}"
    )
