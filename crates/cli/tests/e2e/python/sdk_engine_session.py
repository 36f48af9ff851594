"""A session through an engine with the official SDK, unchanged but for TLS.

Against an engine that serves both the route service and the web API on one
URL (`autoscaler_url = webserver_url = --engine-url`), with the account key:

1. `get_endpoints()` lists the endpoints and `--endpoint` is among them;
2. `get_endpoint(name)` then `endpoint.session(...)`: `/route/` (possibly
   WAITING while the engine starts a worker) then `/session/create`;
3. `get_endpoint_workers` shows exactly one worker holding it
   (`reqs_working == 1` and `cur_load >= cost`), and `is_open()` is true;
   unless `--no-ping`, `session.request("/ping", {})` answers 200, i.e. the
   worker accepts the engine's signature on the session's auth_data;
4. `close()`; `is_open()` then fails (the worker no longer knows the session)
   and `get_endpoint_workers` shows every worker idle (no load, no item).

Usage: sdk_engine_session.py --engine-url URL --api-key ACCOUNT_KEY --endpoint NAME
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from interop_common import Check, expect, patch_tls, poll, run

COST = 100


def holds(worker) -> bool:
    # Both as reported by the worker itself: one tracked item, the session's cost.
    return worker.reqs_working == 1 and worker.cur_load >= COST


def idle(worker) -> bool:
    return worker.reqs_working == 0 and worker.cur_load == 0


def describe(workers) -> list:
    return [
        {"id": w.id, "status": w.status, "cur_load": w.cur_load, "reqs_working": w.reqs_working}
        for w in workers
    ]


async def main_async(args: argparse.Namespace) -> dict:
    os.environ.pop("VAST_DEBUG_WORKER_URL", None)  # route through the engine
    patch_tls()
    from vastai.serverless.client.client import Serverless

    async with Serverless(
        args.api_key, autoscaler_url=args.engine_url, webserver_url=args.engine_url
    ) as client:
        endpoints = await client.get_endpoints()
        names = [e.name for e in endpoints]
        expect(args.endpoint in names, f"endpoint {args.endpoint!r} not listed; listed: {names}")
        endpoint = await client.get_endpoint(args.endpoint)
        expect(isinstance(endpoint.api_key, str) and endpoint.api_key,
               "the listed endpoint has no api_key")

        started = time.monotonic()
        session = await endpoint.session(cost=COST, lifetime=args.lifetime, timeout=args.timeout)
        open_s = time.monotonic() - started
        expect(bool(session.session_id), "session without an id")
        for key in ("signature", "reqnum", "request_idx", "cost", "endpoint", "url"):
            expect(key in session.auth_data, f"auth_data from /route/ lacks {key!r}: {session.auth_data}")
        expect(session.auth_data["url"] == session.url,
               f"auth_data url {session.auth_data['url']!r} differs from the worker used {session.url!r}")

        async def held():
            workers = await client.get_endpoint_workers(endpoint)
            holding = [w for w in workers if holds(w)]
            return (workers, holding) if len(holding) == 1 else None

        workers, holding = await poll("one worker to report the session", args.report_timeout, held)
        expect(await session.is_open() is True, "is_open() on the held session: expected True")

        ping = None
        if args.ping:
            # A signed handler call inside the session: the worker verifies the
            # engine's signature on the session's auth_data (UNSECURED off).
            result = await session.request("/ping", {})
            expect(result.get("status") == 200,
                   f"/ping in the session: HTTP {result.get('status')} {result.get('text')!r}, expected 200")
            ping = result.get("response")

        started = time.monotonic()
        await session.close()
        close_s = time.monotonic() - started
        try:
            await session.is_open()
        except Exception as err:  # the SDK raises once the worker forgot the session
            gone = str(err)
        else:
            raise Check("is_open() after close() succeeded: expected the worker to have ended the session")

        async def released():
            workers = await client.get_endpoint_workers(endpoint)
            # A worker scaled away after the close also counts as released.
            return (workers or ["none"]) if all(idle(w) for w in workers) else None

        after = await poll("the worker to report the release", args.report_timeout, released)

    return {
        "endpoints": names,
        "session_id": session.session_id,
        "worker_url": session.url,
        "request_idx": session.auth_data.get("request_idx"),
        "open_s": round(open_s, 4),
        "close_s": round(close_s, 4),
        "holding_worker": describe(holding)[0],
        "workers_while_held": describe(workers),
        "workers_after_close": describe([w for w in after if w != "none"]),
        "is_open_after_close": gone,
        "ping_response": ping,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-url", required=True)
    parser.add_argument("--api-key", required=True, help="the account key")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--lifetime", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds the SDK may wait for a worker and the session")
    parser.add_argument("--report-timeout", type=float, default=60.0,
                        help="seconds to wait for worker reports to show a change")
    parser.add_argument("--no-ping", dest="ping", action="store_false",
                        help="skip the signed /ping inside the session")
    args = parser.parse_args()
    return run("sdk_engine_session", lambda: main_async(args))


if __name__ == "__main__":
    sys.exit(main())
