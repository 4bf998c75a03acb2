"""`--json` on the listing commands: one object on stdout that a script can parse."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from knrun.cli import app
from knrun.spool import Spool
from knrun.store.types import UnitResult


def test_spool_json_lists_each_version_with_its_pending_and_quarantined(project: Path) -> None:
    async def leftovers() -> None:
        spool = Spool(Path(".knrun/spool.sqlite"))
        for unit_id in (1, 2):
            result = UnitResult(unit_id, {"kn_overview": "n"}, "m", 5, 1, 1, "2026-12-01", "r")
            await spool.append(result, job="kn", version="1.5")
        await spool.set_aside("kn", "1.5", "set aside by the operator")
        await spool.append(
            UnitResult(3, {}, "m", 5, 1, 1, "2026-12-01", "r"), job="kn", version="1.6"
        )
        await spool.close()

    Path(".knrun").mkdir(exist_ok=True)
    asyncio.run(leftovers())
    result = CliRunner().invoke(app, ["spool", "--json"])
    assert result.exit_code == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["pending"] == 1 and listing["quarantined"] == 2
    by_version = {entry["version"]: entry for entry in listing["entries"]}
    assert by_version["1.5"]["quarantine_reasons"] == ["set aside by the operator (2)"]
    assert (by_version["1.6"]["pending"], by_version["1.6"]["quarantined"]) == (1, 0)


def test_an_empty_spool_is_an_empty_list_not_a_sentence(project: Path) -> None:
    result = CliRunner().invoke(app, ["spool", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"entries": [], "pending": 0, "quarantined": 0}
