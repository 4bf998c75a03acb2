"""The account's limits, remembered between runs: what headers said (never a claim), per model
and key (the key kept only as its hash), forgotten after 30 days; and a real run leaves them for
the next one."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clirun import knrun
from knrun.run.live.remembered import FILE, key_id, recall, remember
from knrun.run.live.ticks import Limit
from knrun.sim.xai import XaiSimulator


def test_headers_are_remembered_claims_are_not_and_the_key_is_not_written(tmp_path: Path) -> None:
    limits = {"requests": Limit(20.0, "header"), "tokens": Limit(1000.0, "claim")}
    remember(tmp_path, "grok-4.3", "xai-secret-key-123", limits)
    assert recall(tmp_path, "grok-4.3", "xai-secret-key-123") == {"requests": 20.0}
    assert recall(tmp_path, "grok-4.3", "another-key") is None
    assert recall(tmp_path, "grok-4.5", "xai-secret-key-123") is None
    text = (tmp_path / FILE).read_text()
    assert "xai-secret-key-123" not in text and key_id("xai-secret-key-123") in text


def test_an_old_memory_is_not_started_from(tmp_path: Path) -> None:
    remember(tmp_path, "grok-4.3", "k", {"requests": Limit(20.0, "header")})
    data = json.loads((tmp_path / FILE).read_text())
    for entry in data.values():
        entry["seen_at"] = (datetime.now(UTC) - timedelta(days=31)).isoformat()
    (tmp_path / FILE).write_text(json.dumps(data))
    assert recall(tmp_path, "grok-4.3", "k") is None


def test_a_run_leaves_the_limits_its_replies_named_for_the_next(
    ready: Path, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.limits.requests_per_s = 40
    code, _, err = knrun("go", "--concurrency", "10")
    assert code == 0, err
    key = xai_server.scenario.api_key
    assert recall(ready / ".knrun", "grok-4.3", key) == {"requests": 40.0}
