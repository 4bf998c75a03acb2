"""The Batch API engine: a submitter and a collector on the run's shared core (claimer, ledger,
judge, spool, writer), the batches a job has at xAI, and the operator's moves on them."""
