"""The simulated xAI Batch API: what it holds (`held`), what each read sees of it (`views`), and
its endpoints (`service`). Written from the public record, hostile the ways a real batch service
is: results pages in no order, counters and results and the request list that disagree for a
while, a cancel that takes time to spread, rate limits on every call, bills when processed."""

from knrun.sim.batch.held import Batch, BatchRequest, BatchStats
from knrun.sim.batch.host import BatchHost
from knrun.sim.batch.service import BatchService

__all__ = ["Batch", "BatchHost", "BatchRequest", "BatchService", "BatchStats"]
