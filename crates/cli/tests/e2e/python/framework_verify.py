"""Feeds auth_data signed by nullworker to the `vastai` 1.9.1 worker framework's
own signature check and reports, per case, whether the framework accepts it.

The public key is imported by the framework's own key fetch
(`Backend._fetch_pubkey`, which GETs `<REPORT_ADDR>/pubkey/` and runs
`RSA.import_key`): this script serves the given PEM on a loopback port for it.
Each `auth_data` is parsed with the framework's `AuthData.from_json_msg` and
checked with the private `Backend.__check_signature`, i.e. exactly what a
worker does before running a handler route (UNSECURED forced off).

Input (stdin, JSON):
  {"public_key_pem": "<PEM>",
   "cases": [{"name": "...", "auth_data": {...}, "expect": true|false}, ...]}
Output: one JSON line {"ok", "results": [{"name", "accepted", "expect"}], ...};
`ok` is false (exit 1) when any case has `expect` set and the framework disagrees.
"""

from __future__ import annotations

import json
import os
import sys

from interop_common import Check, expect, run

# The framework's metrics object reads the worker environment at construction;
# it is never started here, so placeholders are enough.
for _key, _value in {
    "CONTAINER_ID": "0",
    "WORKER_PORT": "1",
    "VAST_TCP_PORT_1": "1",
    "PUBLIC_IPADDR": "127.0.0.1",
}.items():
    os.environ.setdefault(_key, _value)
os.environ["UNSECURED"] = "false"


async def serve_pem(pem: str):
    from aiohttp import web

    async def pubkey(_request: web.Request) -> web.Response:
        return web.Response(text=pem)

    app = web.Application()
    app.router.add_get("/pubkey/", pubkey)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host="127.0.0.1", port=0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def main_async(spec: dict) -> dict:
    from vastai.serverless.server.lib.backend import Backend
    from vastai.serverless.server.lib.data_types import AuthData, JsonDataException

    pem = spec.get("public_key_pem")
    cases = spec.get("cases")
    expect(isinstance(pem, str) and "BEGIN" in pem, "input: public_key_pem must be a PEM string")
    expect(isinstance(cases, list) and cases, "input: cases must be a non-empty list")

    runner, base = await serve_pem(pem)
    os.environ["REPORT_ADDR"] = base
    try:
        backend = Backend(
            model_server_url="http://127.0.0.1:1",
            model_log_file="",
            benchmark_handler=None,
            log_actions=[],
            unsecured=False,
            report_addr=base,
        )
        await backend._fetch_pubkey()
    finally:
        await runner.cleanup()
    if backend._pubkey is None:
        raise Check("the framework could not import the public key served at /pubkey/")

    results = []
    mismatches = []
    for case in cases:
        name = case.get("name", "?")
        try:
            auth = AuthData.from_json_msg(case["auth_data"])
        except JsonDataException as err:
            raise Check(f"case {name}: the framework rejects the auth_data shape: {err.message}")
        accepted = backend._Backend__check_signature(auth)
        result = {"name": name, "accepted": bool(accepted)}
        if "expect" in case:
            result["expect"] = bool(case["expect"])
            if result["expect"] != result["accepted"]:
                mismatches.append(name)
        results.append(result)
    if mismatches:
        print(json.dumps({"results": results}), file=sys.stderr)
        raise Check(f"the framework disagrees with the expectation for: {', '.join(mismatches)}")
    return {
        "key_bits": backend._pubkey.size_in_bits(),
        "accepted": sum(1 for r in results if r["accepted"]),
        "rejected": sum(1 for r in results if not r["accepted"]),
        "results": results,
    }


def main() -> int:
    try:
        spec = json.load(sys.stdin)
    except json.JSONDecodeError as err:
        print(json.dumps({"script": "framework_verify", "ok": False,
                          "error": f"stdin is not JSON: {err}"}))
        return 1
    return run("framework_verify", lambda: main_async(spec))


if __name__ == "__main__":
    sys.exit(main())
