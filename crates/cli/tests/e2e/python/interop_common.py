"""Shared helpers of the interop scripts: one JSON result line, the TLS patch.

Every script prints exactly one JSON object on the last line of stdout
(`{"script": ..., "ok": true|false, ...}`) and exits 0 only when `ok` is true.
Diagnostics go to stderr.

The only change made to the official `vastai` SDK is `patch_tls()`: the SDK
downloads Vast's root certificate from the internet before its first request
(even for plain-HTTP URLs); the tests run offline against loopback, so the
download is replaced by Python's default TLS context. Nothing else is patched.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import time
import traceback
from typing import Any, Awaitable, Callable


def patch_tls() -> None:
    """Replace the SDK's root-certificate download with a default TLS context."""
    from vastai.serverless.client.client import _ServerlessBase

    async def get_ssl_context(self: Any) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    _ServerlessBase.get_ssl_context = get_ssl_context


def setup_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


class Check(Exception):
    """An expectation that did not hold; its message says what and why."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Check(message)


def emit(result: dict) -> None:
    print(json.dumps(result, sort_keys=True), flush=True)


def run(script: str, main: Callable[[], Awaitable[dict]]) -> int:
    """Runs `main`, prints its result (or the failure) as one JSON line."""
    import asyncio

    setup_logging()
    started = time.monotonic()
    try:
        result = asyncio.run(main())
    except Check as err:
        emit({"script": script, "ok": False, "error": str(err)})
        return 1
    except Exception as err:  # noqa: BLE001 - report anything as a failed run
        traceback.print_exc(file=sys.stderr)
        emit({"script": script, "ok": False, "error": f"{type(err).__name__}: {err}"})
        return 1
    result = {"script": script, "ok": True, **result}
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    emit(result)
    return 0


async def poll(what: str, timeout: float, probe: Callable[[], Awaitable[Any]], interval: float = 0.2) -> Any:
    """Awaits `probe()` until it returns a truthy value, or fails after `timeout` s."""
    import asyncio

    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Check(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)
