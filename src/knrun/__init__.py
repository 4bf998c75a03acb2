"""knrun: a batch runner for large LLM generation jobs that proves a run is safe first."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("knrun")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
