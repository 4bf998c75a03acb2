"""The simulated xAI API: chat completions, the model list, the API key, and (through the shared
account) the Batch and Management APIs, as one ASGI app."""

from knrun.sim.account import TICKS_PER_CENT
from knrun.sim.xai.models import FORCEABLE, XaiStats, prompt_key
from knrun.sim.xai.service import XaiSimulator

__all__ = ["FORCEABLE", "TICKS_PER_CENT", "XaiSimulator", "XaiStats", "prompt_key"]
