"""Run the OpenAI cookbook's api_request_parallel_processor.py for bench/vs_cookbook.py, in a
process of its own, against the xAI simulator on a plain-HTTP loopback port.

The cookbook's own function does the work; two things around it are set here, nothing in it:

- its `api_endpoint_from_url` accepts https:// URLs only (it fails on the simulator's
  http://127.0.0.1:PORT/v1/chat/completions), so the endpoint is given as chat/completions;
- it has no bound on requests in flight of its own (it starts one task per request as fast as
  its limiter and its 1 ms loop allow): aiohttp's connection pool, 100 connections by default,
  is what holds requests on the wire. The pool is set to `--connections`.

Its limiter is given limits it never reaches. `tiktoken` must be importable: the bench puts a
shim first on PYTHONPATH.

    python bench/_cookbook_child.py COOKBOOK REQUESTS RESULTS URL API_KEY CONNECTIONS
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from types import ModuleType
from typing import Any

import aiohttp

NEVER_BINDS = 1e12  # requests and tokens per minute: the limiter always has capacity


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("api_request_parallel_processor", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pooled(connections: int) -> Any:
    """aiohttp.ClientSession with a pool of `connections` (one request each at a time)."""
    session = aiohttp.ClientSession

    def make(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        kwargs.setdefault("connector", aiohttp.TCPConnector(limit=connections))
        return session(*args, **kwargs)

    return make


def main() -> None:
    cookbook, requests, results, url, api_key, connections = sys.argv[1:7]
    module = load(cookbook)
    module.api_endpoint_from_url = lambda _url: "chat/completions"
    aiohttp.ClientSession = pooled(int(connections))  # type: ignore[misc]
    asyncio.run(
        module.process_api_requests_from_file(
            requests_filepath=requests,
            save_filepath=results,
            request_url=url,
            api_key=api_key,
            max_requests_per_minute=NEVER_BINDS,
            max_tokens_per_minute=NEVER_BINDS,
            token_encoding_name="cl100k_base",
            max_attempts=5,
            logging_level=logging.WARNING,  # its default, INFO, logs a line per request
        )
    )


if __name__ == "__main__":
    main()
