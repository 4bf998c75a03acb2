"""One knrun run at a time per working folder, and this folder's identity for lease owners.

`go`, `retry` and preflight's canary hold an exclusive lock on `.knrun/run.lock` for as long
as they run, so a cron retry never overlaps an operator's run on the same machine (leases keep
runs on different machines apart). The lock is an OS file lock: it goes away with the process,
even after `kill -9`, so there is never a stale lock to clean up.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import IO

from knrun.errors import NotAuthorised


class RunLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "run.lock"
        self._handle: IO[str] | None = None

    def acquire(self, what: str) -> None:
        """Take the lock, or NotAuthorised naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another knrun process"
            handle.close()
            raise NotAuthorised(
                f"a knrun run already holds {self.path} ({holder}): not starting"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {"pid": os.getpid(), "command": what, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            )
        )
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def machine_id(state_dir: Path) -> str:
    """A random id for this working folder, made once. Lease owners are `<machine id>:<run id>`,
    so a run starting here can give back leases of runs that died here (it holds the lock, so
    none of them is alive)."""
    path = state_dir / "machine-id"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True)
        value = f"m{secrets.token_hex(6)}"
        path.write_text(value + "\n", encoding="utf-8")
        return value


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
