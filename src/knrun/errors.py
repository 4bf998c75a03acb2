"""knrun's error family and the process exit codes each one maps to.

Exit codes are a contract with cron and wrappers: keep them stable and documented in the README.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # runtime failure: store or provider unreachable, unexpected error
    USAGE = 2  # bad config or input, or the run is not authorised (no valid receipt)
    BREAKER = 3  # circuit breaker: credit exhausted or a rate-limit storm
    SPEND_CAP = 4  # spend cap reached
    DRIFT = 5  # cost drift alarm halted the run, or its cost could not be verified
    FAILURE_RATE = 6  # most recent paid replies failed (bad JSON, truncation, unexpected 4xx)
    INTERRUPTED = 130  # Ctrl-C / SIGTERM


class KnrunError(Exception):
    """An expected failure: the CLI prints its message on one line and exits with `exit_code`."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(KnrunError):
    """Settings, job file, pricing file or command-line input is wrong."""

    exit_code = ExitCode.USAGE


class InputError(KnrunError):
    """A file the operator gave knrun (an import file, say) has bad content."""

    exit_code = ExitCode.USAGE


class StoreError(KnrunError):
    """The unit store refused or failed a request. `retryable`: the same request may succeed
    later (a lock, an outage); otherwise the store refused it outright (bad SQL, a constraint)."""

    exit_code = ExitCode.FAILURE
    retryable = True


class StoreRefused(StoreError):
    """The store refused this request, for what it holds (a constraint, a type, bad SQL): the
    same request will be refused again, but other requests may pass."""

    retryable = False


class StoreUnusable(StoreError):
    """The store refuses every write, whatever it holds: a revoked token, a database that is
    gone, full or read-only, a daily quota used up. Nothing is quarantined for it: results stay
    in the spool until the operator fixes what the message names."""

    retryable = False


class NotAuthorised(KnrunError):
    """The run has no valid preflight receipt (or another run holds the lock)."""

    exit_code = ExitCode.USAGE


class RunStopped(KnrunError):
    """A run (or its checks) that ended for a guard's reason: the message is the reason, the
    code the guard's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(exit_code)
