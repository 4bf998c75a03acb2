"""The names, columns and value encodings every statement of the stores shares.

Identifiers come from the validated job spec and are always double-quoted; the job's `where` is
operator-owned text. Everything else (unit data, model output, versions, times) is a bound
parameter, never SQL text. Statements stay within D1's limits (100 parameters, 100 KB each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

RUNS_TABLE = "knrun_runs"
# Units added to an xAI batch are leased to the batch itself: "batch:<batch id>".
BATCH_OWNER_PREFIX = "batch:"
POSITION = "knrun_position"  # the claimed row's rowid, as a claim returns it
ID_TEXT, ID_TYPE = "knrun_id_text", "knrun_id_type"  # the claimed row's id, exactly
# D1 answers in JSON from JavaScript: an integer past 2^53 comes back rounded, and one bound as
# a JSON number is rounded on the way in. Such ids travel as text (an INTEGER column's affinity
# turns the text back into the exact integer).
JS_SAFE_INTEGER = 2**53
MIN_ROWID, MAX_ROWID = -(2**63), 2**63 - 1

# Bookkeeping columns (without the job's prefix) and their SQL types.
BOOKKEEPING_COLUMNS: dict[str, str] = {
    "prompt_version": "TEXT",  # version of the result in the output columns (success only)
    "model": "TEXT",
    "cost_usd": "REAL",  # for the operator's own dashboards; knrun sums cost_ticks
    "cost_ticks": "INTEGER",  # exact billed cost, 1 tick = 1e-10 USD
    "input_tokens": "INTEGER",
    "output_tokens": "INTEGER",
    "processed_at": "TEXT",  # ISO 8601 UTC of the last attempt
    "run_id": "TEXT",
    "status": "TEXT",  # outcome of the last attempt: done | failed
    "status_version": "TEXT",  # the version `status` and `attempts` refer to
    "error": "TEXT",  # "<reason>: <detail>" for a failure
    "attempts": "INTEGER",  # attempts at status_version
    "lease_owner": "TEXT",
    "lease_expires": "INTEGER",  # unix seconds (fractions kept: SQLite stores them as REAL)
    "attempt_id": "TEXT",  # the last request's id (charges table key; a refund clears it)
    "request_hash": "TEXT",  # what was sent when the unit last failed (JobSpec.request_hash)
}
# Failure reasons `knrun retry` takes by default: a second try can turn out differently. The
# others depend on the request itself and are retried only once the request changes.
TRANSIENT_REASONS = (
    "invalid_json",
    "bad_response",
    "retries_exhausted",
    "timeout",
    "dropped",
    "batch_error",
)

# The runs table's columns and their definitions; `detail` (JSON) stays last.
RUN_COLUMNS: dict[str, str] = {
    "run_id": "TEXT PRIMARY KEY",
    "kind": "TEXT NOT NULL",
    "job": "TEXT NOT NULL",
    "version": "TEXT NOT NULL",
    "model": "TEXT NOT NULL",
    "prompt_hash": "TEXT",
    "host": "TEXT",
    "started_at": "TEXT NOT NULL",
    "ended_at": "TEXT",
    "updated_at": "TEXT",  # refreshed while the run lives: a stale one was killed
    "state": "TEXT NOT NULL",
    "exit_code": "INTEGER",
    "exit_reason": "TEXT",
    "units_ok": "INTEGER NOT NULL DEFAULT 0",
    "units_failed": "INTEGER NOT NULL DEFAULT 0",
    "tracked_ticks": "INTEGER NOT NULL DEFAULT 0",
    "billed_ticks": "INTEGER NOT NULL DEFAULT 0",
    "estimate_ticks": "INTEGER",
    "owner": "TEXT",  # lease owner of the run's units: a dead run's are given back
    "detail": "TEXT",
}
STATUS_TABLE = "knrun_status"  # the last full count of a job version, for cheap status calls
CHARGES_TABLE = "knrun_charges"
# One row per request that cost or may have cost money, inserted with the unit's write in the
# same transaction and keyed by the request's attempt id, so a repeated write counts it once.
CHARGE_COLUMNS: dict[str, str] = {
    "attempt_id": "TEXT PRIMARY KEY",
    "run_id": "TEXT NOT NULL",
    "job": "TEXT NOT NULL",
    "version": "TEXT NOT NULL",
    "unit_id": "TEXT",
    "outcome": "TEXT NOT NULL",  # done, or the failure reason
    "billed_ticks": "INTEGER",  # NULL: the reply carried no cost_in_usd_ticks
    "tracked_ticks": "INTEGER NOT NULL DEFAULT 0",
    "possible_ticks": "INTEGER NOT NULL DEFAULT 0",
    "expected_ticks": "INTEGER NOT NULL DEFAULT 0",
    "at": "TEXT NOT NULL",
    # Added in knrun 0.2 (`knrun db migrate` adds them): what the reply bought, and how long
    # it took, for the prompt cache's share and the run report.
    "input_tokens": "INTEGER",
    "cached_tokens": "INTEGER",
    "output_tokens": "INTEGER",
    "reasoning_tokens": "INTEGER",
    "latency_ms": "INTEGER",
}
_RUN_COLUMNS = tuple(RUN_COLUMNS)


@dataclass(frozen=True)
class Statement:
    sql: str
    params: tuple[Any, ...] = ()


def id_param(unit_id: Any) -> Any:
    """A unit id as a bound parameter: as text when D1 would round it as a number."""
    if (
        isinstance(unit_id, int)
        and not isinstance(unit_id, bool)
        and abs(unit_id) > JS_SAFE_INTEGER
    ):
        return str(unit_id)
    return unit_id


def id_from_row(text: Any, kind: Any) -> Any:
    """A claimed id from its exact text and SQLite type."""
    if kind == "integer":
        return int(str(text))
    if kind == "real":
        return float(str(text))
    return text


def quote(identifier: str) -> str:
    return f'"{identifier}"'


def statement_size(statement: Statement) -> int:
    """Bytes a statement adds to a JSON request body (close enough to budget with)."""
    params = json.dumps(list(statement.params), ensure_ascii=False, separators=(",", ":"))
    return len(statement.sql.encode()) + len(params.encode()) + 24
