"""Open files, for a run that may hold thousands of connections: each request in flight is a
socket, and macOS starts a shell with a soft limit of 256 open files."""

from __future__ import annotations

import resource
from dataclasses import replace

from knrun.run.config import RunConfig

SPARE_FILES = 64  # the store, the spool, the log, the lock, the management API, a margin


def fit_open_files(config: RunConfig) -> tuple[RunConfig, str | None]:
    """Raise the soft limit on open files as far as the run needs (up to the hard limit); if
    that is still short, lower the run's concurrency to fit. Returns the configuration to run
    with, and a note when either happened."""
    needed = config.workers + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return config, None
    ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        soft = ceiling
    except (ValueError, OSError):
        pass
    if soft >= needed:
        return config, f"open-file limit raised from its default to {soft:,} for the connections"
    fits = max(1, soft - SPARE_FILES)
    fitted = replace(
        config,
        concurrency=min(config.concurrency, fits),
        max_concurrency=min(config.max_concurrency, fits) if config.max_concurrency else None,
    )
    return fitted, (
        f"at most {fits:,} units in flight: the open-file limit is {soft:,} (raise it with "
        "`ulimit -n`)"
    )
