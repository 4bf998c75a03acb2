"""`knrun spool --json`: what the local spool holds, as one object for a script."""

from __future__ import annotations

from typing import Any

from knrun.run.spool_ops import Listing


def listing_json(listing: Listing) -> dict[str, Any]:
    """Every job version with entries: pending (paid, not in the store yet) and quarantined
    (refused by the store, or set aside), with the commonest quarantine reasons."""
    return {
        "entries": [
            {
                "job": held.job,
                "version": held.version,
                "pending": held.pending,
                "quarantined": held.quarantined,
                "quarantine_reasons": listing.reasons.get((held.job, held.version), []),
            }
            for held in listing.held
        ],
        "pending": sum(held.pending for held in listing.held),
        "quarantined": sum(held.quarantined for held in listing.held),
    }
