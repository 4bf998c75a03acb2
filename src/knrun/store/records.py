"""The reading half of a store: progress, the status cache, money, and knrun's runs table.
Mixed into `SqlUnitStore`, which supplies `execute`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from knrun.errors import ConfigError, StoreError
from knrun.job import JobSpec
from knrun.store.runs_sql import RunsSql
from knrun.store.schema import Statement
from knrun.store.sql import UnitSql
from knrun.store.types import Money, Progress, RunRecord

Rows = list[dict[str, Any]]


class RunRecords:
    job: JobSpec
    sql: UnitSql
    runs_sql: RunsSql
    _clock: Callable[[], float]

    async def execute(self, statements: Sequence[Statement], *, idempotent: bool) -> list[Rows]:
        raise NotImplementedError

    async def progress(self, max_attempts: int = 0) -> Progress:
        now = self._clock()
        [figures], reasons, [money] = await self.execute(
            [
                self.sql.progress(now, max_attempts),
                self.sql.failures_by_reason(),
                self.runs_sql.money(),
            ],
            idempotent=True,
        )
        return Progress(
            version=self.job.version,
            total=int(figures["total"]),
            done=int(figures["done"]),
            failed=int(figures["failed"]),
            remaining=int(figures["remaining"]),
            leased=int(figures["leased"]),
            in_batches=int(figures["in_batches"]),
            retry_exhausted=int(figures["retry_exhausted"]),
            done_cost_ticks=int(figures["done_cost"]),
            avg_input_tokens=_optional_float(figures["avg_input"]),
            avg_output_tokens=_optional_float(figures["avg_output"]),
            last_processed_at=figures["last_processed"],
            failed_by_reason={str(row["reason"]): int(row["n"]) for row in reasons},
            money=_money(money),
        )

    async def status(
        self, *, max_attempts: int = 0, fresh_s: float = 30.0, runs: int = 20
    ) -> tuple[Progress, list[RunRecord], float]:
        """What `knrun status` shows: the progress figures (a full count of the job's rows, so
        reused for `fresh_s` from the store's cache: D1 bills every row read, and a dashboard
        polling every few seconds would otherwise read the table each time), the recent runs,
        and the figures' age in seconds. One request while the cache is fresh."""
        try:
            cached, recent = await self.execute(
                [self.runs_sql.read_status(), self.runs_sql.select_runs(self.job.name, runs, None)],
                idempotent=True,
            )
        except ConfigError:
            raise
        except StoreError as exc:
            if "no such table" not in str(exc) or exc.retryable:
                raise
            cached = []  # a store migrated by an older knrun: no cache table yet
            [recent] = await self.execute(
                [self.runs_sql.select_runs(self.job.name, runs, None)], idempotent=True
            )
        now = self._clock()
        records = [self.runs_sql.run_from_row(row) for row in recent]
        if cached and cached[0]["max_attempts"] == max_attempts:
            computed = float(cached[0]["computed_at"])
            age = now - computed
            # A run that ended since the count changed what it counts: count again.
            if 0 <= age <= fresh_s and not _ended_since(records, computed):
                return _progress_from_json(cached[0]["figures"]), records, age
        progress = await self.progress(max_attempts)
        with contextlib.suppress(StoreError):  # an unmigrated cache only costs the next scan
            figures = json.dumps(asdict(progress))
            await self.execute(
                [self.runs_sql.write_status(max_attempts, now, figures)], idempotent=True
            )
        return progress, records, 0.0

    async def money(self, *, kinds: Sequence[str] | None = None, since: str | None = None) -> Money:
        """This version's charges summed; only runs of these `kinds` started since `since`."""
        [[row]] = await self.execute(
            [self.runs_sql.money(kinds=kinds, since=since)], idempotent=True
        )
        return _money(row)

    async def running_runs(self, owner_prefix: str) -> Rows:
        """Runs marked running whose owner starts with `owner_prefix` (run_id, owner,
        updated_at)."""
        [rows] = await self.execute([self.runs_sql.running_runs(owner_prefix)], idempotent=True)
        return rows

    async def mark_dead(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            now = utc_stamp(self._clock())
            await self.execute([self.runs_sql.mark_dead(run_ids, now)], idempotent=True)

    async def heartbeat(self, run: RunRecord, live_within_s: float = 60.0) -> list[RunRecord]:
        """Refresh a live run's record and read the other live runs sharing this store, in one
        request; the store's request budget is split among them all."""
        others = await self.other_live_runs(
            run.run_id, live_within_s, also=[self.runs_sql.upsert_run(run)]
        )
        self.share_budget(len(others) + 1)
        return others

    async def charged_since(self, since: str, *, exclude_run: str) -> int:
        [[row]] = await self.execute(
            [self.runs_sql.charged_since(since, exclude_run)], idempotent=True
        )
        return int(row["spent"] or 0)

    async def other_live_runs(
        self, run_id: str, live_within_s: float = 60.0, also: Sequence[Statement] = ()
    ) -> list[RunRecord]:
        since = utc_stamp(self._clock() - live_within_s)
        *_, rows = await self.execute(
            [*also, self.runs_sql.live_runs(since, run_id)], idempotent=True
        )
        return [self.runs_sql.run_from_row(row) for row in rows]

    def share_budget(self, runners: int) -> None:
        """`runners` live runners share this store's request budget (remote stores only)."""

    async def record_run(self, run: RunRecord) -> None:
        await self.execute([self.runs_sql.upsert_run(run)], idempotent=True)

    async def runs(self, limit: int = 20, kind: str | None = None) -> list[RunRecord]:
        [rows] = await self.execute(
            [self.runs_sql.select_runs(self.job.name, limit, kind)], idempotent=True
        )
        return [self.runs_sql.run_from_row(row) for row in rows]


def _ended_since(runs: Sequence[RunRecord], moment: float) -> bool:
    for run in runs:
        if run.ended_at:
            ended = datetime.fromisoformat(run.ended_at.replace("Z", "+00:00"))
            if ended.tzinfo is None:
                ended = ended.replace(tzinfo=UTC)
            if ended.timestamp() + 1 >= moment:  # ended_at has whole seconds
                return True
    return False


def _progress_from_json(text: str) -> Progress:
    data = json.loads(text)
    data["money"] = Money(**data["money"])
    return Progress(**data)


def _money(row: dict[str, Any]) -> Money:
    return Money(**{name: int(row[name] or 0) for name in Money.__dataclass_fields__})


def utc_stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
