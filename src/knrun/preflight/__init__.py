"""The pre-run checklist: its rules as data (steps), its flow (checklist), the estimate and the
receipt `knrun go` requires."""
