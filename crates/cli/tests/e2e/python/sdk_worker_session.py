"""Session open / is_open / close with the official SDK straight on a worker.

Uses the SDK's debug shortcut: with VAST_DEBUG_WORKER_URL set, every route
call is answered locally with `{"request_idx": 1, "url": <worker>}`, so no
engine is involved. The worker must run with UNSECURED=true (the shortcut's
auth_data has no signature; `/session/create` does not verify one anyway).

Checks, in order: a session opens (201 with a session id), `is_open()` is true,
`close()` ends it on the worker, `is_open()` then fails (the SDK raises on a
missing session, quirk Q16), and a second session can be opened and closed
(the worker with max_sessions=1 was really freed).

Usage: sdk_worker_session.py --worker-url http://127.0.0.1:PORT [--lifetime S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from interop_common import Check, expect, patch_tls, run


async def session_round(client, endpoint, lifetime: float, timeout: float) -> dict:
    started = time.monotonic()
    session = await endpoint.session(cost=100, lifetime=lifetime, timeout=timeout)
    open_s = time.monotonic() - started
    expect(isinstance(session.session_id, str) and len(session.session_id) > 0,
           f"session id {session.session_id!r}: expected a non-empty string")
    expect(isinstance(session.expiration, (int, float)) and session.expiration > time.time(),
           f"expiration {session.expiration!r}: expected an epoch time in the future")
    expect(await session.is_open() is True, "is_open() after create: expected True")
    started = time.monotonic()
    await session.close()
    close_s = time.monotonic() - started
    expect(session.open is False, "session still marked open after close()")
    try:
        still_open = await session.is_open()
    except Exception as err:  # the SDK raises when the worker no longer knows it
        gone = str(err)
    else:
        raise Check(f"is_open() after close returned {still_open!r}: expected the SDK to raise")
    expect("does not exist" in gone,
           f"is_open() after close failed with {gone!r}: expected 'session does not exist'")
    return {"session_id": session.session_id, "open_s": round(open_s, 4), "close_s": round(close_s, 4)}


async def main_async(args: argparse.Namespace) -> dict:
    os.environ["VAST_DEBUG_WORKER_URL"] = args.worker_url
    patch_tls()
    from vastai.serverless.client.client import Serverless
    from vastai.serverless.client.endpoint import Endpoint

    async with Serverless("interop-unused-key", instance="local") as client:
        endpoint = Endpoint(client, name="interop-debug", id=1, api_key="interop-unused-key")
        first = await session_round(client, endpoint, args.lifetime, args.timeout)
        second = await session_round(client, endpoint, args.lifetime, args.timeout)
    expect(first["session_id"] != second["session_id"], "the worker reused a session id")
    return {"worker_url": args.worker_url, "sessions": [first, second]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-url", required=True)
    parser.add_argument("--lifetime", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds the SDK may spend opening one session")
    args = parser.parse_args()
    return run("sdk_worker_session", lambda: main_async(args))


if __name__ == "__main__":
    sys.exit(main())
