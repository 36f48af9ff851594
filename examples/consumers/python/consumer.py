#!/usr/bin/env python3
"""A queue consumer for a nullworker worker, in Python with redis-py.

It runs beside `nullworker serve` (the engine's `--consumer-command`, or a Vast
on-start script) and does one job per session:

  1. wait until this worker holds a session (GET /session?wait=30 on the
     worker's control port): a worker nobody reserved may be stopped at any
     moment, so it must not take a job;
  2. claim one job from the Redis list with BLMOVE into this consumer's
     processing list, heart-beating so that `nullworker dispatch` counts it
     as in flight and hands it back if this process dies;
  3. do the work;
  4. acknowledge it (or put it back on failure);
  5. release the worker (POST /release), and start again.

It follows the key layout of nullworker's Redis list queue
(`redis://HOST:PORT?list=NAME`), so `nullworker dispatch`, `nullworker consume`
and `nullworker queue stats` see the same jobs. See ../README.md.

Environment: REDIS_URL (redis://127.0.0.1:6379), QUEUE (jobs),
VISIBILITY_TIMEOUT (30 s), NULL_CONTROL_PORT (18999), NULL_CONSUMER_PORT (the
health endpoint's port, 9090 when unset), EXAMPLE_DONE_FILE (optional: a file
that gets one line "<payload> done" per finished job).

Standard library plus `redis` (pip install -r requirements.txt).
"""

import hashlib
import http.server
import json
import math
import os
import random
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
QUEUE = os.environ.get("QUEUE", "jobs")
VISIBILITY_TIMEOUT = float(os.environ.get("VISIBILITY_TIMEOUT", "30"))
CONTROL = "http://127.0.0.1:%s" % os.environ.get("NULL_CONTROL_PORT", "18999")
HEALTH_PORT = int(os.environ.get("NULL_CONSUMER_PORT") or "9090")
DONE_FILE = os.environ.get("EXAMPLE_DONE_FILE")
# How long one claim waits for a job before the session is released: the job
# the session was opened for went to another worker.
CLAIM_TIMEOUT = 10

# A name unique to this process: the processing list and heartbeat key are
# derived from it, and a name reused by two live processes would mix their jobs.
CONSUMER = "%s-%d-%08x" % (socket.gethostname(), os.getpid(), random.getrandbits(32))
PROCESSING = "%s:processing:%s" % (QUEUE, CONSUMER)
HEARTBEAT = "%s:consumer:%s" % (QUEUE, CONSUMER)
CONSUMERS = QUEUE + ":consumers"
ATTEMPTS = QUEUE + ":attempts"

stopping = threading.Event()
busy = threading.Event()  # set while a job is claimed


def log(message):
    print("consumer %s: %s" % (CONSUMER, message), flush=True)


def serve_health():
    """GET /health answers 200 while the main loop runs (BACKEND_HEALTH_URL)."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path.split("?")[0] == "/health"
            body = b"ok\n" if ok else b"not found\n"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", HEALTH_PORT), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log("health on http://127.0.0.1:%d/health" % HEALTH_PORT)


def control(method, path, timeout):
    request = urllib.request.Request(CONTROL + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def wait_for_session():
    """Blocks until this worker holds a session (or we are stopping)."""
    while not stopping.is_set():
        try:
            if control("GET", "/session?wait=30", timeout=40).get("held"):
                return True
        except (urllib.error.URLError, OSError, ValueError) as err:
            # The worker may not be listening yet, or is restarting.
            log("control port not answering (%s); retrying" % err)
            stopping.wait(1)
    return False


def release_session():
    try:
        log("release: %s" % control("POST", "/release", timeout=10))
    except urllib.error.HTTPError as err:
        log("release refused: HTTP %d" % err.code)
    except (urllib.error.URLError, OSError, ValueError) as err:
        # Not fatal: the session expires at the end of its lifetime anyway.
        log("release failed: %s" % err)


def heartbeat(r, ttl_ms):
    """Registers this consumer and keeps its jobs claimed for ttl_ms more."""
    with r.pipeline() as p:
        p.sadd(CONSUMERS, CONSUMER)
        p.set(HEARTBEAT, "1", px=ttl_ms)
        p.execute()


def claim(r):
    """Moves the oldest job into our processing list; None after CLAIM_TIMEOUT."""
    vt_ms = int(VISIBILITY_TIMEOUT * 1000)
    # The heartbeat must outlive the blocking read, or the dispatcher would
    # take us for dead while we wait.
    heartbeat(r, vt_ms + CLAIM_TIMEOUT * 1000)
    payload = r.blmove(QUEUE, PROCESSING, CLAIM_TIMEOUT, "RIGHT", "LEFT")
    if payload is None:
        return None
    # The job id is the SHA-1 of the payload; the attempts hash counts deliveries.
    attempt = r.hincrby(ATTEMPTS, hashlib.sha1(payload).hexdigest(), 1)
    heartbeat(r, vt_ms)
    return payload, attempt


def work(payload):
    """The job itself: sleep for the number of seconds in the payload, if any."""
    try:
        seconds = float(payload)
    except ValueError:
        seconds = 0.0
    if math.isfinite(seconds) and 0 < seconds <= 3600:
        time.sleep(seconds)
    if DONE_FILE:
        with open(DONE_FILE, "a", encoding="utf-8") as f:
            f.write("%s done\n" % payload.decode("utf-8", "replace"))


def run_with_heartbeat(r, payload):
    """Runs work(payload), refreshing the heartbeat every third of the visibility timeout."""
    done = threading.Event()
    vt_ms = int(VISIBILITY_TIMEOUT * 1000)

    def beat():
        while not done.wait(VISIBILITY_TIMEOUT / 3):
            try:
                heartbeat(r, vt_ms)
            except redis.RedisError as err:
                log("heartbeat failed: %s" % err)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        work(payload)
    finally:
        done.set()
        beater.join()


def ack(r, payload):
    with r.pipeline(transaction=True) as p:
        p.lrem(PROCESSING, 1, payload)
        p.hdel(ATTEMPTS, hashlib.sha1(payload).hexdigest())
        p.execute()


def fail(r, payload):
    """Puts a failed job back at the end consumers take from, to run again.

    A fuller consumer would dead-letter it after N attempts instead (LPUSH
    QUEUE:dead payload and HDEL the attempts entry, as nullworker does); the
    dispatcher already dead-letters the jobs of consumers that die N times.
    """
    with r.pipeline(transaction=True) as p:
        p.lrem(PROCESSING, 1, payload)
        p.rpush(QUEUE, payload)
        p.execute()


def main():
    # SIGTERM (the engine stopping this worker): finish the running job, then
    # exit; exit at once when no job is held. A job left behind by a kill is
    # handed back by the dispatcher once our heartbeat key expires.
    def on_term(*_):
        stopping.set()
        if not busy.is_set():
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    serve_health()
    r = redis.Redis.from_url(REDIS_URL)
    while not stopping.is_set():
        if not wait_for_session():
            break
        claimed = claim(r)
        if claimed is None:
            log("no job within %d s; releasing the session" % CLAIM_TIMEOUT)
            release_session()
            continue
        payload, attempt = claimed
        busy.set()
        text = payload.decode("utf-8", "replace")
        log("job %s (attempt %d)" % (text, attempt))
        try:
            run_with_heartbeat(r, payload)
        except Exception as err:  # noqa: BLE001 (any failure of the work)
            log("job %s failed: %s; putting it back" % (text, err))
            fail(r, payload)
        else:
            ack(r, payload)
            log("job %s done" % text)
        release_session()
        busy.clear()
    log("stopped")


if __name__ == "__main__":
    main()
