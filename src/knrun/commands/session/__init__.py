"""Everything around a run that `go`, `retry` and the canary share: the lock, the spool
replayed first, the run's record and log, open files, and keeping the machine awake."""
