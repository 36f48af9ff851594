#!/usr/bin/env bash
# A queue consumer for a nullworker worker, in bash with redis-cli and curl.
#
# It runs beside `nullworker serve` (the engine's `--consumer-command`, or a
# Vast on-start script) and does one job per session:
#
#   1. wait until this worker holds a session (GET /session?wait=30 on the
#      worker's control port): a worker nobody reserved may be stopped at any
#      moment, so it must not take a job;
#   2. claim one job from the Redis list with BLMOVE into this consumer's
#      processing list, heart-beating so that `nullworker dispatch` counts it
#      as in flight and hands it back if this process dies;
#   3. do the work (the `work` function below);
#   4. acknowledge it (or put it back on failure);
#   5. release the worker (POST /release), and start again.
#
# It follows the key layout of nullworker's Redis list queue
# (`redis://HOST:PORT?list=NAME`); see ../README.md.
#
# Environment: REDIS_URL (redis://127.0.0.1:6379), QUEUE (jobs),
# VISIBILITY_TIMEOUT (30 s), NULL_CONTROL_PORT (18999), NULL_CONSUMER_PORT (the
# health endpoint's port, 9090 when unset), EXAMPLE_DONE_FILE (optional: a
# file that gets one line "<payload> done" per finished job).
#
# Needs bash, redis-cli (Debian: redis-tools) and curl. The health endpoint
# needs socat (Debian: socat): bash cannot listen on a port by itself, so
# without socat there is none, and an endpoint whose BACKEND_HEALTH_URL points
# at this consumer never becomes ready.
#
# Limits of the shell version: payloads are single lines of text, not empty
# (redis-cli prints nil as an empty line, and a shell variable cannot hold
# a NUL byte).
set -uo pipefail

self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

# socat runs `consumer.sh --health-response` once per connection: read the
# request, answer it, exit.
if [[ "${1:-}" == "--health-response" ]]; then
    IFS= read -r request || exit 0
    while IFS= read -r header && [[ -n "${header%$'\r'}" ]]; do :; done
    path="${request#* }"
    path="${path%% *}"
    if [[ "${path%%\?*}" == "/health" ]]; then
        printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n'
    else
        printf 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
    fi
    exit 0
fi

redis_url="${REDIS_URL:-redis://127.0.0.1:6379}"
queue="${QUEUE:-jobs}"
visibility_timeout="${VISIBILITY_TIMEOUT:-30}"
control="http://127.0.0.1:${NULL_CONTROL_PORT:-18999}"
health_port="${NULL_CONSUMER_PORT:-9090}"
done_file="${EXAMPLE_DONE_FILE:-}"
# How long one claim waits for a job before the session is released: the job
# the session was opened for went to another worker.
claim_timeout=10

# A name unique to this process: the processing list and heartbeat key are
# derived from it, and a name reused by two live processes would mix their jobs.
consumer="$(hostname | tr -c 'A-Za-z0-9._\n-' _)-$$-$(printf '%04x%04x' "$RANDOM" "$RANDOM")"
processing="$queue:processing:$consumer"
heartbeat_key="$queue:consumer:$consumer"
consumers="$queue:consumers"
attempts="$queue:attempts"

vt_ms="$(awk -v s="$visibility_timeout" 'BEGIN { printf "%d", s * 1000 }')"
beat_every="$(awk -v s="$visibility_timeout" 'BEGIN { printf "%.3f", s / 3 }')"
if ((vt_ms < 1000)); then
    echo "consumer: VISIBILITY_TIMEOUT=$visibility_timeout: expected a number of seconds, at least 1" >&2
    exit 2
fi

log() { echo "consumer $consumer: $*"; }
rcli() { redis-cli -u "$redis_url" --no-auth-warning "$@"; }

# Registers this consumer and keeps its jobs claimed for $1 ms more.
heartbeat() {
    rcli SADD "$consumers" "$consumer" >/dev/null &&
        rcli SET "$heartbeat_key" 1 PX "$1" >/dev/null
}

release_session() {
    # Not fatal when it fails: the session expires at the end of its lifetime.
    log "release: $(curl -sS -m 10 -X POST "$control/release" 2>&1)"
}

# The job itself: sleep for the number of seconds in the payload, if any.
work() {
    local payload="$1"
    if [[ "$payload" =~ ^[0-9]+(\.[0-9]+)?$ ]] &&
        awk -v s="$payload" 'BEGIN { exit !(s > 0 && s <= 3600) }'; then
        sleep "$payload" || return 1
    fi
    if [[ -n "$done_file" ]]; then
        printf '%s done\n' "$payload" >>"$done_file" || return 1
    fi
}

health_pid=""
if ! command -v socat >/dev/null 2>&1; then
    log "socat not found: no health endpoint (install socat to serve http://127.0.0.1:$health_port/health)"
elif [[ "$self" =~ [^A-Za-z0-9/._-] ]]; then
    log "the path $self has characters socat cannot run: no health endpoint"
else
    socat "TCP-LISTEN:$health_port,bind=127.0.0.1,reuseaddr,fork" \
        "EXEC:$BASH $self --health-response" &
    health_pid=$!
    log "health on http://127.0.0.1:$health_port/health"
fi

# SIGTERM (the engine stopping this worker) reaches the whole process group,
# so a running `sleep` is cut short and its job is put back (the fail path);
# otherwise the loop just exits. A job left behind by a kill is handed back by
# the dispatcher once this consumer's heartbeat key expires.
busy=0
stopping=0
trap 'stopping=1; if ((busy == 0)); then exit 0; fi' TERM INT
trap '[[ -n "$health_pid" ]] && kill "$health_pid" 2>/dev/null' EXIT

while true; do
    # 1. Wait for a session.
    status="$(curl -sS -m 40 "$control/session?wait=30" 2>&1)"
    if [[ ! "$status" =~ \"held\"[[:space:]]*:[[:space:]]*true ]]; then
        if [[ ! "$status" =~ \"held\" ]]; then
            # The worker may not be listening yet, or is restarting.
            log "control port not answering ($status); retrying"
            sleep 1
        fi
        continue
    fi

    # 2. Claim one job. The heartbeat must outlive the blocking read, or the
    # dispatcher would take this consumer for dead while it waits.
    busy=1
    if ! heartbeat $((vt_ms + claim_timeout * 1000)); then
        log "cannot reach redis at $redis_url; retrying"
        busy=0
        ((stopping)) && exit 0
        sleep 1
        continue
    fi
    payload="$(rcli --raw BLMOVE "$queue" "$processing" RIGHT LEFT "$claim_timeout")"
    if [[ -z "$payload" ]]; then
        log "no job within $claim_timeout s; releasing the session"
        release_session
        busy=0
        ((stopping)) && exit 0
        continue
    fi
    # The job id is the SHA-1 of the payload; the attempts hash counts deliveries.
    id="$(printf '%s' "$payload" | sha1sum | cut -c1-40)"
    attempt="$(rcli HINCRBY "$attempts" "$id" 1)"
    heartbeat "$vt_ms"
    log "job $payload (attempt $attempt)"

    # 3. Work, refreshing the heartbeat every third of the visibility timeout.
    (
        trap 'kill "$nap" 2>/dev/null; exit 0' TERM
        while true; do
            sleep "$beat_every" &
            nap=$!
            wait "$nap"
            heartbeat "$vt_ms"
        done
    ) &
    beater=$!
    work "$payload"
    outcome=$?
    kill "$beater" 2>/dev/null
    wait "$beater" 2>/dev/null

    # 4. Acknowledge: remove it from the processing list and forget its
    # attempts, in one script so nothing sees half of it. On failure, put it
    # back at the end consumers take from. A fuller consumer would instead
    # dead-letter it after N attempts (LPUSH "$queue:dead", HDEL the attempts
    # entry), as nullworker does.
    if ((outcome == 0)); then
        rcli EVAL "redis.call('LREM', KEYS[1], 1, ARGV[1]) redis.call('HDEL', KEYS[2], ARGV[2])" \
            2 "$processing" "$attempts" "$payload" "$id" >/dev/null
        log "job $payload done"
    else
        rcli EVAL "if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then redis.call('RPUSH', KEYS[2], ARGV[1]) end" \
            2 "$processing" "$queue" "$payload" >/dev/null
        log "job $payload failed; put back"
    fi

    # 5. Release the worker.
    release_session
    busy=0
    if ((stopping)); then
        exit 0
    fi
done
