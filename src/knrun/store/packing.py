"""Outcomes packed into as few store requests as D1's request size allows: each outcome costs
its write statement and its row of the charges statement, both measured as sent."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from knrun.store.schema import Statement, statement_size
from knrun.store.types import AttemptRefund, Outcome

CHARGES_STATEMENT_BYTES = 600  # the charges statement's SQL, before its rows


def pack(
    outcomes: Sequence[Outcome],
    budget_bytes: int | None,
    statement_of: Callable[[Outcome], Statement | None],
    charge_row: Callable[[Any], Any],
) -> list[list[Outcome]]:
    """Split outcomes into as few requests as `budget_bytes` allows, in order (no budget: one
    request)."""
    if budget_bytes is None:
        return [list(outcomes)] if outcomes else []
    chunks: list[list[Outcome]] = []
    current: list[Outcome] = []
    size = CHARGES_STATEMENT_BYTES
    for outcome in outcomes:
        statement = statement_of(outcome)
        cost = _charge_size(outcome, charge_row) + (statement_size(statement) if statement else 0)
        if current and size + cost > budget_bytes:
            chunks.append(current)
            current, size = [], CHARGES_STATEMENT_BYTES
        current.append(outcome)
        size += cost
    if current:
        chunks.append(current)
    return chunks


def _charge_size(outcome: Outcome, charge_row: Callable[[Any], Any]) -> int:
    if isinstance(outcome, AttemptRefund) or not outcome.charged:
        return 0
    row = json.dumps(charge_row(outcome), ensure_ascii=False, separators=(",", ":"))
    return len(row.encode()) + 8  # the row, escaped once more as a string parameter
