"""The writes and leases on one job's units table: results and failures (idempotent, first
wins), attempts refunded, and leases renewed, handed over and released."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from knrun.pricing import ticks_to_usd
from knrun.store.schema import (
    ID_TEXT,
    ID_TYPE,
    Statement,
    id_param,
    quote,
)
from knrun.store.types import AttemptRefund, UnitFailure, UnitResult
from knrun.store.unit_table import UnitTable


class UnitWrites(UnitTable):
    """Statement builders that change rows of the units table."""

    def write_result(self, result: UnitResult) -> Statement:
        """Idempotent: only applies while no result for this version is stored (first wins)."""
        c = self.col
        assignments = [f"{quote(column)} = ?" for column in result.values]
        params: list[Any] = list(result.values.values())
        bookkeeping: list[tuple[str, Any]] = [
            ("prompt_version", self.version),
            ("model", result.model),
            ("cost_usd", float(ticks_to_usd(result.cost_ticks).quantize(Decimal("1e-10")))),
            ("cost_ticks", result.cost_ticks),
            ("input_tokens", result.input_tokens),
            ("output_tokens", result.output_tokens),
            ("processed_at", result.processed_at),
            ("run_id", result.run_id),
            ("status_version", self.version),
            ("attempt_id", result.attempt_id or None),
        ]
        assignments += [f"{c[name]} = ?" for name, _ in bookkeeping]
        params += [value for _, value in bookkeeping]
        assignments += [
            f"{c['status']} = 'done'",
            f"{c['error']} = NULL",
            self._attempts_expr(),
            f"{c['lease_owner']} = NULL",
            f"{c['lease_expires']} = NULL",
        ]
        params.append(self.version)
        sql = (
            f"UPDATE {self.table} SET {', '.join(assignments)} "
            f"WHERE {self.id} = ? AND {self._not_done()}"
        )
        return Statement(sql, (*params, id_param(result.unit_id), self.version))

    def write_failure(self, failure: UnitFailure) -> Statement:
        """Idempotent: requires the failing runner's lease, which the write itself clears."""
        c = self.col
        sql = (
            f"UPDATE {self.table} SET {c['status']} = 'failed', {c['status_version']} = ?, "
            f"{c['error']} = ?, {c['run_id']} = ?, {c['processed_at']} = ?, "
            f"{c['attempt_id']} = ?, {c['request_hash']} = ?, "
            f"{self._attempts_expr()}, {c['lease_owner']} = NULL, {c['lease_expires']} = NULL "
            f"WHERE {self.id} = ? AND {c['lease_owner']} = ? AND {self._not_done()}"
        )
        params = (
            self.version,
            failure.error_text[:2000],
            failure.run_id,
            failure.processed_at,
            failure.attempt_id or None,
            failure.request_hash or None,
            self.version,
            id_param(failure.unit_id),
            failure.owner,
            self.version,
        )
        return Statement(sql, params)

    def refund_attempt(self, refund: AttemptRefund) -> Statement:
        """Take back the attempt a failure counted; once only, as it clears the attempt id."""
        c = self.col
        return Statement(
            f"UPDATE {self.table} SET {c['attempts']} = MAX(COALESCE({c['attempts']}, 1) - 1, 0), "
            f"{c['attempt_id']} = NULL WHERE {self.id} = ? AND {c['attempt_id']} = ?",
            (id_param(refund.unit_id), refund.attempt_id),
        )

    def renew(self, owner: str, expires: float, unit_ids: Sequence[Any] | None = None) -> Statement:
        """Extend every lease this owner holds (or those of `unit_ids`)."""
        c = self.col
        sql = f"UPDATE {self.table} SET {c['lease_expires']} = ? WHERE {c['lease_owner']} = ?"
        if unit_ids is None:
            return Statement(sql, (expires, owner))
        sql += f" AND {self.id} IN (SELECT value FROM json_each(?))"
        return Statement(sql, (expires, owner, json.dumps([id_param(i) for i in unit_ids])))

    def lease_index(self) -> Statement:
        """Leases are found by owner (renewal, release): without this, each is a table scan."""
        name = quote(f"knrun_{self.job.source.table}_{self.job.source.prefix}lease")
        return Statement(
            f"CREATE INDEX IF NOT EXISTS {name} ON {self.table} ({self.col['lease_owner']})"
        )

    def release(
        self, owner: str, unit_ids: Sequence[Any] | None, keep: Sequence[Any] = ()
    ) -> Statement:
        """Drop this owner's leases: all, or those of `unit_ids`, but those of `keep`."""
        c = self.col
        sql = (
            f"UPDATE {self.table} SET {c['lease_owner']} = NULL, {c['lease_expires']} = NULL "
            f"WHERE {c['lease_owner']} = ?"
        )
        params: list[Any] = [owner]
        # One JSON parameter for any number of ids: D1 allows only 100 bound parameters.
        if unit_ids is not None:
            sql += f" AND {self.id} IN (SELECT value FROM json_each(?))"
            params.append(json.dumps([id_param(i) for i in unit_ids]))
        if keep:
            sql += f" AND {self.id} NOT IN (SELECT value FROM json_each(?))"
            params.append(json.dumps([id_param(i) for i in keep]))
        return Statement(sql, tuple(params))

    def transfer(
        self, unit_ids: Sequence[Any], owner: str, new_owner: str, expires: float
    ) -> Statement:
        """Hand these units' leases from `owner` to `new_owner` (a batch, before they are added
        to it); returns the ids `new_owner` now holds of them. Applying it twice changes
        nothing more, so a request whose reply was lost can be sent again."""
        c = self.col
        return Statement(
            f"UPDATE {self.table} SET {c['lease_owner']} = ?, {c['lease_expires']} = ? "
            f"WHERE {c['lease_owner']} IN (?, ?) "
            f"AND {self.id} IN (SELECT value FROM json_each(?)) "
            f"RETURNING CAST({self.id} AS TEXT) AS {ID_TEXT}, typeof({self.id}) AS {ID_TYPE}",
            (new_owner, expires, owner, new_owner, json.dumps([id_param(i) for i in unit_ids])),
        )

    def release_prefix(self, owner_prefix: str, keep: Sequence[str] = ()) -> Statement:
        """Drop leases whose owner starts with `owner_prefix`, but those of the owners in
        `keep` (runs that are alive)."""
        c = self.col
        # substr, not LIKE: no escaping of '_' or '%', and D1 caps LIKE patterns at 50 bytes.
        return Statement(
            f"UPDATE {self.table} SET {c['lease_owner']} = NULL, {c['lease_expires']} = NULL "
            f"WHERE substr({c['lease_owner']}, 1, ?) = ? "
            f"AND {c['lease_owner']} NOT IN (SELECT value FROM json_each(?))",
            (len(owner_prefix), owner_prefix, json.dumps(list(keep))),
        )
