"""Keeping a Mac awake while a run lasts: a sleeping Mac Mini stalls a run for hours."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def keep_awake() -> subprocess.Popen[bytes] | None:
    """`caffeinate -i -w <our pid>` on macOS: it exits by itself when this process does."""
    if sys.platform != "darwin" or shutil.which("caffeinate") is None:
        return None
    return subprocess.Popen(["caffeinate", "-i", "-w", str(os.getpid())])  # noqa: S603, S607
