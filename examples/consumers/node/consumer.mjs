// A queue consumer for a nullworker worker, in Node.js (20+) with node-redis.
//
// It runs beside `nullworker serve` (the engine's `--consumer-command`, or a
// Vast on-start script) and does one job per session:
//
//   1. wait until this worker holds a session (GET /session?wait=30 on the
//      worker's control port): a worker nobody reserved may be stopped at any
//      moment, so it must not take a job;
//   2. claim one job from the Redis list with BLMOVE into this consumer's
//      processing list, heart-beating so that `nullworker dispatch` counts it
//      as in flight and hands it back if this process dies;
//   3. do the work;
//   4. acknowledge it (or put it back on failure);
//   5. release the worker (POST /release), and start again.
//
// It follows the key layout of nullworker's Redis list queue
// (`redis://HOST:PORT?list=NAME`); see ../README.md.
//
// Environment: REDIS_URL (redis://127.0.0.1:6379), QUEUE (jobs),
// VISIBILITY_TIMEOUT (30 s), NULL_CONTROL_PORT (18999), NULL_CONSUMER_PORT
// (the health endpoint's port, 9090 when unset), EXAMPLE_DONE_FILE (optional:
// a file that gets one line "<payload> done" per finished job).
//
// Run: npm install && node consumer.mjs

import { createHash, randomBytes } from "node:crypto";
import { appendFile } from "node:fs/promises";
import { createServer } from "node:http";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "redis";

const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const QUEUE = process.env.QUEUE || "jobs";
const VISIBILITY_TIMEOUT = Number(process.env.VISIBILITY_TIMEOUT || "30");
const CONTROL = `http://127.0.0.1:${process.env.NULL_CONTROL_PORT || "18999"}`;
const HEALTH_PORT = Number(process.env.NULL_CONSUMER_PORT || "9090");
const DONE_FILE = process.env.EXAMPLE_DONE_FILE;
// How long one claim waits for a job before the session is released: the job
// the session was opened for went to another worker.
const CLAIM_TIMEOUT = 10;

if (!Number.isFinite(VISIBILITY_TIMEOUT) || VISIBILITY_TIMEOUT < 1) {
  console.error(`VISIBILITY_TIMEOUT=${process.env.VISIBILITY_TIMEOUT}: expected a number of seconds, at least 1`);
  process.exit(2);
}

// A name unique to this process: the processing list and heartbeat key are
// derived from it, and a name reused by two live processes would mix their jobs.
const CONSUMER = `${hostname().replace(/[^A-Za-z0-9._-]/g, "_")}-${process.pid}-${randomBytes(4).toString("hex")}`;
const PROCESSING = `${QUEUE}:processing:${CONSUMER}`;
const HEARTBEAT = `${QUEUE}:consumer:${CONSUMER}`;
const CONSUMERS = `${QUEUE}:consumers`;
const ATTEMPTS = `${QUEUE}:attempts`;
const VT_MS = Math.round(VISIBILITY_TIMEOUT * 1000);

const log = (message) => console.log(`consumer ${CONSUMER}: ${message}`);
const sha1 = (payload) => createHash("sha1").update(payload).digest("hex");

let stopping = false;
let busy = false;

// GET /health answers 200 while the main loop runs (BACKEND_HEALTH_URL).
function serveHealth() {
  const server = createServer((req, res) => {
    const ok = req.method === "GET" && req.url.split("?")[0] === "/health";
    res.writeHead(ok ? 200 : 404, { "Content-Type": "text/plain" });
    res.end(ok ? "ok\n" : "not found\n");
  });
  server.listen(HEALTH_PORT, "127.0.0.1", () => log(`health on http://127.0.0.1:${HEALTH_PORT}/health`));
  return server;
}

async function control(method, path, timeoutMs) {
  const res = await fetch(CONTROL + path, { method, signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: await res.json().catch(() => ({})) };
}

// Resolves once this worker holds a session (false when stopping).
async function waitForSession() {
  while (!stopping) {
    try {
      const { body } = await control("GET", "/session?wait=30", 40_000);
      if (body.held) return true;
    } catch (err) {
      // The worker may not be listening yet, or is restarting.
      log(`control port not answering (${err.cause?.code ?? err.message}); retrying`);
      await sleep(1000);
    }
  }
  return false;
}

async function releaseSession() {
  try {
    const { status, body } = await control("POST", "/release", 10_000);
    log(`release: ${status} ${JSON.stringify(body)}`);
  } catch (err) {
    // Not fatal: the session expires at the end of its lifetime anyway.
    log(`release failed: ${err.message}`);
  }
}

// Registers this consumer and keeps its jobs claimed for ttlMs more.
async function heartbeat(redis, ttlMs) {
  await redis.multi().sAdd(CONSUMERS, CONSUMER).set(HEARTBEAT, "1", { PX: ttlMs }).exec();
}

// Moves the oldest job into our processing list; null after CLAIM_TIMEOUT.
// BLMOVE blocks its connection, so it runs on its own (`blocking`).
async function claim(redis, blocking) {
  // The heartbeat must outlive the blocking read, or the dispatcher would
  // take us for dead while we wait.
  await heartbeat(redis, VT_MS + CLAIM_TIMEOUT * 1000);
  const payload = await blocking.blMove(QUEUE, PROCESSING, "RIGHT", "LEFT", CLAIM_TIMEOUT);
  if (payload === null) return null;
  // The job id is the SHA-1 of the payload; the attempts hash counts deliveries.
  const attempt = await redis.hIncrBy(ATTEMPTS, sha1(payload), 1);
  await heartbeat(redis, VT_MS);
  return { payload, attempt };
}

// The job itself: sleep for the number of seconds in the payload, if any.
async function work(payload) {
  const seconds = Number(payload);
  if (payload.trim() !== "" && Number.isFinite(seconds) && seconds > 0 && seconds <= 3600) {
    await sleep(seconds * 1000);
  }
  if (DONE_FILE) await appendFile(DONE_FILE, `${payload} done\n`);
}

// Runs work(payload), refreshing the heartbeat every third of the visibility timeout.
async function runWithHeartbeat(redis, payload) {
  const timer = setInterval(() => {
    heartbeat(redis, VT_MS).catch((err) => log(`heartbeat failed: ${err.message}`));
  }, VT_MS / 3);
  try {
    await work(payload);
  } finally {
    clearInterval(timer);
  }
}

async function ack(redis, payload) {
  await redis.multi().lRem(PROCESSING, 1, payload).hDel(ATTEMPTS, sha1(payload)).exec();
}

// Puts a failed job back at the end consumers take from, to run again. A
// fuller consumer would dead-letter it after N attempts instead (LPUSH
// QUEUE:dead payload and HDEL the attempts entry, as nullworker does).
async function fail(redis, payload) {
  await redis.multi().lRem(PROCESSING, 1, payload).rPush(QUEUE, payload).exec();
}

async function main() {
  // SIGTERM (the engine stopping this worker): finish the running job, then
  // exit; exit at once when no job is held. A job left behind by a kill is
  // handed back by the dispatcher once our heartbeat key expires.
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
      stopping = true;
      if (!busy) process.exit(0);
    });
  }
  const health = serveHealth();
  const redis = createClient({ url: REDIS_URL });
  redis.on("error", (err) => log(`redis: ${err.message}`));
  await redis.connect();
  const blocking = redis.duplicate();
  blocking.on("error", (err) => log(`redis: ${err.message}`));
  await blocking.connect();

  while (!stopping) {
    if (!(await waitForSession())) break;
    busy = true;
    const job = await claim(redis, blocking);
    if (job === null) {
      log(`no job within ${CLAIM_TIMEOUT} s; releasing the session`);
      await releaseSession();
      busy = false;
      continue;
    }
    log(`job ${job.payload} (attempt ${job.attempt})`);
    let failure = null;
    try {
      await runWithHeartbeat(redis, job.payload);
    } catch (err) {
      failure = err;
    }
    if (failure === null) {
      await ack(redis, job.payload);
      log(`job ${job.payload} done`);
    } else {
      log(`job ${job.payload} failed: ${failure.message}; putting it back`);
      await fail(redis, job.payload);
    }
    await releaseSession();
    busy = false;
  }
  health.close();
  await Promise.all([redis.quit(), blocking.quit()]);
  log("stopped");
}

main().catch((err) => {
  log(`fatal: ${err.stack ?? err}`);
  process.exit(1);
});
