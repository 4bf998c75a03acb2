"""The README's first real run, rehearsed as a newcomer would: an operator's folder (the
clone's root files), `cp .env.example .env`, `knrun sim serve`'s whole output pasted into
`.env`, then every step as a separate process, each exiting 0.

About 30 s (D1's requests are paced at 3 a second, as against the real API), so it runs only
when asked: `KNRUN_FIRST_RUN_TEST=1 python -m pytest tests/cli/test_first_run.py`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLE_CHECKLIST, EXAMPLE_JOB, EXAMPLE_PRICING, ROOT
from knrun.sim.corpus import write_jsonl

STEPS = [
    ["db", "import", "units.jsonl"],
    ["db", "migrate"],
    ["pricing", "sync"],
    ["preflight"],
    ["go"],
    ["status"],
    ["retry"],
    ["go"],
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The files a clone has at its root."""
    (tmp_path / "prompts").mkdir()
    shutil.copy(EXAMPLE_JOB, tmp_path / "prompts")
    for path in (EXAMPLE_PRICING, EXAMPLE_CHECKLIST, ROOT / ".env.example"):
        shutil.copy(path, tmp_path)
    return tmp_path


@pytest.fixture
def served(folder: Path) -> Iterator[list[str]]:
    """`knrun sim serve` in the folder, fast; yields the lines it printed."""
    (folder / "fast.toml").write_text("[latency]\ntime_scale = 0.002\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "knrun", "sim", "serve", "--port", "0", "--scenario", "fast.toml"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        lines: list[str] = []
        while not lines or lines[-1] != "KNRUN_STORE=d1":
            line = server.stdout.readline()
            assert line, server.stderr.read() if server.stderr else "server died"
            lines.append(line.rstrip("\n"))
        yield lines
    finally:
        server.terminate()
        server.communicate(timeout=10)


@pytest.mark.skipif(
    os.environ.get("KNRUN_FIRST_RUN_TEST") != "1", reason="slow: set KNRUN_FIRST_RUN_TEST=1"
)
def test_the_readme_first_run_against_sim_serve_exits_0_at_every_step(
    folder: Path, served: list[str]
) -> None:
    assert any(line.startswith("# D1 block: MOVES THE UNIT STORE") for line in served)
    env = (folder / ".env.example").read_text() + "\n" + "\n".join(served) + "\n"
    (folder / ".env").write_text(env)  # cp .env.example .env, then paste
    write_jsonl(folder / "units.jsonl", 14)
    for step in STEPS:
        done = subprocess.run(
            [sys.executable, "-m", "knrun", *step],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (step, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr
