"""`knrun preflight`: its rules as data (steps), its flow (checklist), the receipt it issues
(issuing) and the canary it runs."""
