"""One knrun run at a time per working folder, and this folder's identity for lease owners.

`go`, `retry` and preflight's canary hold an exclusive lock on `.knrun/run.lock` for as long
as they run, so a cron retry never overlaps an operator's run on the same machine (leases keep
runs on different machines apart). The lock is an OS file lock: it goes away with the process,
even after `kill -9`, so there is never a stale lock to clean up.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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
    """A random id for this working folder, made once. A folder copied to another machine
    keeps it, so an owner names the host and its boot too (see `Identity`)."""
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


@dataclass(frozen=True)
class Identity:
    """Who holds a lease: this working folder, on this host, since this boot, in this process.
    A folder copied to a second Mac has the same folder id but another host; a folder whose
    run died has the same host and boot but a process that is gone."""

    folder: str
    host: str
    boot: str
    pid: int

    def owner(self, run_id: str) -> str:
        return f"{self.folder}@{self.host}/{self.boot}/{self.pid}:{run_id}"

    @property
    def folder_prefix(self) -> str:
        return f"{self.folder}@"

    def holds_dead(self, owner: str) -> bool | None:
        """Whether `owner`'s process is provably gone: True or False when it ran on this host,
        None when it ran elsewhere (only its heartbeat can tell)."""
        parsed = _OWNER.match(owner)
        if parsed is None or parsed["folder"] != self.folder:
            return None
        if parsed["host"] != self.host:
            return None
        return parsed["boot"] != self.boot or not pid_alive(int(parsed["pid"]))


_OWNER = re.compile(r"^(?P<folder>[^@]+)@(?P<host>[^/]*)/(?P<boot>[^/]*)/(?P<pid>\d+):")


def this_identity(state_dir: Path) -> Identity:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "host"
    return Identity(machine_id(state_dir), host, boot_id(), os.getpid())


def boot_id() -> str:
    """This boot of this machine, short: a process id means nothing across a reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["/usr/sbin/sysctl", "-n", "kern.boottime"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            return hashlib.sha256(out.encode()).hexdigest()[:8]
        except (OSError, subprocess.SubprocessError):
            pass
    return "0"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
