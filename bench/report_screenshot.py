"""Not a benchmark: remakes docs/report.png, the screenshot docs/report.md shows.

Runs `knrun demo --scenario flaky` (rate limits, server errors, malformed JSON: every chart has
data) on a local SQLite store at a tenth of real latency, so the run lasts about a minute and
its charts have a shape, then `knrun report` in its folder and headless Chromium on the file.

    python bench/report_screenshot.py [--units 600] [--time-scale 0.1] [--out docs/report.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from knrun.cli.demo import invoke
from knrun.sim import demo

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=600)
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    out = args.out.resolve()
    folder = Path(tempfile.mkdtemp(prefix="knrun-report-shot-")) / "demo"
    plan = demo.Plan(
        scenario="flaky",
        units=args.units,
        store="sqlite",
        folder=folder,
        time_scale=args.time_scale,
    )
    code = demo.run(plan, invoke, print)
    if code:
        raise SystemExit(f"the demo exited {code}")
    os.environ["KNRUN_STORE"] = f"sqlite:{folder / 'knrun.sqlite'}"
    os.chdir(folder)
    invoke(["report", "-o", "report.html"])
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={out}",
                f"--window-size=1280,{args.height}",
                (folder / "report.html").as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"{out}: {out.stat().st_size:,} bytes, from {folder / 'report.html'}")


if __name__ == "__main__":
    main()
