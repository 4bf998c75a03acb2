"""The core of a run: a coordinator wiring a claimer, an engine, a ledger and a writer, and the
commands built on it (go, retry, the canary, status, spool)."""
