"""Reference Null PyWorker on the official `vastai` 1.9.1 worker framework.

This is the Python baseline that `nullworker serve` is measured against: the
same null worker design (PROTOCOL.md section 13) built on the framework in
`vastai.serverless.server`, started with the same environment variables as
our worker (CONTAINER_ID, REPORT_ADDR, MASTER_TOKEN, WORKER_PORT,
WORKER_HTTP_PORT, VAST_TCP_PORT_<WORKER_PORT>, PUBLIC_IPADDR, USE_SSL,
UNSECURED, BACKEND_HEALTH_URL, NULL_CONTROL_PORT).

* `POST /ping` (workload 100, parallel) is the one benchmarked handler the
  framework requires; its benchmark is pinned to 100 by writing `100` to
  `.has_benchmark` in the working directory before the framework reads it.
* `max_sessions = 1`: one session (reservation) per worker.
* A control server on 127.0.0.1:NULL_CONTROL_PORT (default 18999) serves
  `POST /release` (close every open session without `session_auth`) and,
  when BACKEND_HEALTH_URL is unset, the stub `GET /health` that the framework
  health-checks.

Run it from a scratch working directory (the benchmark cache file is written
there); see bench/reference/README.md.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional
from urllib.parse import urlsplit

from aiohttp import web

from vastai.serverless.server.worker import (
    BenchmarkConfig,
    HandlerConfig,
    Worker,
    WorkerConfig,
)

log = logging.getLogger("null_worker")

NULL_MAX_PERF = 100
NULL_WORKLOAD = 100.0
DEFAULT_CONTROL_PORT = 18999
BENCHMARK_SENTINEL = "__null_worker_benchmark__"
BENCHMARK_CACHE_FILE = ".has_benchmark"


class ConfigError(Exception):
    """A bad environment variable; the message names it and what was expected."""


def check_required_env() -> None:
    """Fails early, naming the variable, where the framework would crash later."""
    for var in ("CONTAINER_ID", "REPORT_ADDR", "WORKER_PORT", "PUBLIC_IPADDR"):
        if not os.environ.get(var, "").strip():
            raise ConfigError(f"{var} is not set")
    raw = os.environ["CONTAINER_ID"]
    try:
        int(raw)
    except ValueError:
        raise ConfigError(f"CONTAINER_ID={raw!r}: expected an integer") from None
    port = os.environ["WORKER_PORT"]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"WORKER_PORT={port!r}: expected a TCP port number between 1 and 65535")
    if not os.environ.get(f"VAST_TCP_PORT_{port}", "").strip():
        raise ConfigError(f"VAST_TCP_PORT_{port} is not set: expected the external port of WORKER_PORT")


def control_port_from_env() -> int:
    raw = os.environ.get("NULL_CONTROL_PORT", "").strip()
    if not raw:
        return DEFAULT_CONTROL_PORT
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"NULL_CONTROL_PORT={raw!r}: expected a TCP port number between 1 and 65535"
        )
    return port


def health_target(control_port: int) -> tuple[str, int, str, bool]:
    """(origin without port, port, health path, stub needed) for the framework."""
    raw = os.environ.get("BACKEND_HEALTH_URL", "").strip()
    if not raw:
        return "http://127.0.0.1", control_port, "/health", True
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"BACKEND_HEALTH_URL={raw!r}: expected an absolute http(s) URL "
            "such as http://127.0.0.1:9090/health"
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return f"{parts.scheme}://{host}", port, path, False


class ControlServer:
    """The loopback control server: `POST /release` and the stub `GET /health`."""

    def __init__(self, port: int, serve_health: bool):
        self.port = port
        self.serve_health = serve_health
        self.backend: Optional[Any] = None  # set once the framework backend exists
        self._runner: Optional[web.AppRunner] = None

    async def release(self, _request: web.Request) -> web.Response:
        backend = self.backend
        if backend is None:
            return web.json_response(
                {"released": False, "reason": "backend not ready"}, status=503
            )
        async with backend._sessions_lock:
            session_ids = list(backend.sessions.keys())
        if not session_ids:
            return web.json_response({"released": False, "reason": "no active session"})
        released = []
        for session_id in session_ids:
            # The framework's own close: callbacks, metrics, in-flight cut.
            if await backend._Backend__close_session(session_id):
                released.append(session_id)
        if not released:
            return web.json_response({"released": False, "reason": "no active session"})
        log.info("released sessions %s", released)
        return web.json_response({"released": True, "session_ids": released})

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def __aenter__(self) -> "ControlServer":
        # Pin the benchmark before the framework runs it (it reads the cache file).
        try:
            with open(BENCHMARK_CACHE_FILE, "w") as f:
                f.write(str(NULL_MAX_PERF))
        except OSError as err:
            log.warning("could not write %s: %s", BENCHMARK_CACHE_FILE, err)
        app = web.Application()
        app.router.add_post("/release", self.release)
        if self.serve_health:
            app.router.add_get("/health", self.health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host="127.0.0.1", port=self.port)
        await site.start()
        log.info("control server on http://127.0.0.1:%d", self.port)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def ping(**_payload: Any) -> dict:
    return {"ok": True}


def build_worker() -> Worker:
    check_required_env()
    control_port = control_port_from_env()
    origin, port, health_path, stub = health_target(control_port)
    control = ControlServer(control_port, serve_health=stub)
    config = WorkerConfig(
        model_server_url=origin,
        model_server_port=port,
        model_healthcheck_url=health_path,
        handlers=[
            HandlerConfig(
                route="/ping",
                allow_parallel_requests=True,
                workload_calculator=lambda _payload: NULL_WORKLOAD,
                is_remote_dispatch=True,
                remote_function=ping,
                benchmark_config=BenchmarkConfig(
                    generator=lambda: {BENCHMARK_SENTINEL: True},
                    runs=1,
                    concurrency=1,
                    do_warmup=False,
                ),
            )
        ],
        max_sessions=1,
        lifecycle=control,
    )
    worker = Worker(config)
    control.backend = worker.backend
    return worker


def main() -> int:
    try:
        worker = build_worker()
    except ConfigError as err:
        print(f"null_worker: error: {err}", file=sys.stderr)
        return 2
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
