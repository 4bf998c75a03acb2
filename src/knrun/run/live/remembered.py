"""The account's rate limits as the last replies said them, remembered per model and API key
between runs (`.knrun/limits.json`), so the next run (a `go` after preflight's canary, a cron
`retry`) starts just under the limit instead of growing towards it. Only what `x-ratelimit-*`
headers said (facts, never a 429's claim), and the key only as a hash of itself. A remembered
limit is a starting point: the first header of the new run replaces it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from knrun.files import write_atomically
from knrun.run.live.ticks import Limit

FILE = "limits.json"
MAX_AGE = timedelta(days=30)  # tiers change: an old memory is not worth starting from


def key_id(api_key: str) -> str:
    """Which key the limits are for, without the key: limits are per team, and a key is a team."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def recall(state_dir: Path, model: str, api_key: str) -> dict[str, float] | None:
    """The limits per second (requests, tokens) last seen for this model and key, if recent."""
    entry = _read(state_dir).get(f"{model}|{key_id(api_key)}")
    if not isinstance(entry, dict):
        return None
    try:
        seen = datetime.fromisoformat(str(entry["seen_at"]))
        limits = {kind: float(entry[kind]) for kind in ("requests", "tokens") if entry.get(kind)}
    except (KeyError, TypeError, ValueError):
        return None
    if datetime.now(UTC) - seen > MAX_AGE:
        return None
    return limits or None


def remember(state_dir: Path, model: str, api_key: str, limits: dict[str, Limit]) -> None:
    """Keep what headers said of this model's limits (nothing when they said nothing)."""
    facts = {kind: limit.per_s for kind, limit in limits.items() if limit.source == "header"}
    if not facts:
        return
    known = _read(state_dir)
    seen_at = datetime.now(UTC).isoformat(timespec="seconds")
    known[f"{model}|{key_id(api_key)}"] = {**facts, "seen_at": seen_at}
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(state_dir / FILE, json.dumps(known, indent=2, sort_keys=True) + "\n")


def _read(state_dir: Path) -> dict[str, object]:
    try:
        data = json.loads((state_dir / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
