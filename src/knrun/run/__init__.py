"""The core of a run: a coordinator wiring a claimer, an engine (`live/` or `batch/`), a ledger
and a writer. The commands built on it live in `knrun.commands`."""
