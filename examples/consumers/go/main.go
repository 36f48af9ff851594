// Command consumer is a queue consumer for a nullworker worker, in Go with
// go-redis.
//
// It runs beside `nullworker serve` (the engine's `--consumer-command`, or a
// Vast on-start script) and does one job per session:
//
//  1. wait until this worker holds a session (GET /session?wait=30 on the
//     worker's control port): a worker nobody reserved may be stopped at any
//     moment, so it must not take a job;
//  2. claim one job from the Redis list with BLMOVE into this consumer's
//     processing list, heart-beating so that `nullworker dispatch` counts it
//     as in flight and hands it back if this process dies;
//  3. do the work;
//  4. acknowledge it (or put it back on failure);
//  5. release the worker (POST /release), and start again.
//
// It follows the key layout of nullworker's Redis list queue
// (`redis://HOST:PORT?list=NAME`); see ../README.md.
//
// Environment: REDIS_URL (redis://127.0.0.1:6379), QUEUE (jobs),
// VISIBILITY_TIMEOUT (30 s), NULL_CONTROL_PORT (18999), NULL_CONSUMER_PORT
// (the health endpoint's port, 9090 when unset), EXAMPLE_DONE_FILE (optional:
// a file that gets one line "<payload> done" per finished job).
//
// Run: go mod tidy && go run .
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// How long one claim waits for a job before the session is released: the
// job the session was opened for went to another worker.
const claimTimeout = 10 * time.Second

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

var (
	redisURL   = env("REDIS_URL", "redis://127.0.0.1:6379")
	queue      = env("QUEUE", "jobs")
	control    = "http://127.0.0.1:" + env("NULL_CONTROL_PORT", "18999")
	healthAddr = "127.0.0.1:" + env("NULL_CONSUMER_PORT", "9090")
	doneFile   = os.Getenv("EXAMPLE_DONE_FILE")

	// A name unique to this process: the processing list and heartbeat key
	// are derived from it, and a name reused by two live processes would
	// mix their jobs.
	consumer     = consumerName()
	processing   = queue + ":processing:" + consumer
	heartbeatKey = queue + ":consumer:" + consumer
	consumers    = queue + ":consumers"
	attempts     = queue + ":attempts"

	waitClient    = &http.Client{Timeout: 40 * time.Second}
	releaseClient = &http.Client{Timeout: 10 * time.Second}
)

func consumerName() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r < 128 && (r == '.' || r == '_' || r == '-' ||
			(r >= '0' && r <= '9') || (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z')) {
			return r
		}
		return '_'
	}, host)
	if host == "" {
		host = "host"
	}
	random := make([]byte, 4)
	_, _ = rand.Read(random)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(random))
}

// jobID is the SHA-1 of the payload in hex, as nullworker computes it.
func jobID(payload string) string {
	sum := sha1.Sum([]byte(payload))
	return hex.EncodeToString(sum[:])
}

// serveHealth answers GET /health with 200 while the process runs
// (BACKEND_HEALTH_URL); anything else is 404.
func serveHealth() {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	ln, err := net.Listen("tcp", healthAddr)
	if err != nil {
		log.Fatalf("health endpoint on %s: %v", healthAddr, err)
	}
	go func() { _ = http.Serve(ln, mux) }()
	log.Printf("health on http://%s/health", healthAddr)
}

// waitForSession returns true once this worker holds a session, false when
// ctx is cancelled (SIGTERM).
func waitForSession(ctx context.Context) bool {
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, control+"/session?wait=30", nil)
		if err != nil {
			log.Fatalf("control URL %s: %v", control, err)
		}
		resp, err := waitClient.Do(req)
		if err != nil {
			// The worker may not be listening yet, or is restarting.
			log.Printf("control port not answering (%v); retrying", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		var status struct {
			Held bool `json:"held"`
		}
		err = json.NewDecoder(resp.Body).Decode(&status)
		resp.Body.Close()
		if err == nil && status.Held {
			return true
		}
	}
	return false
}

func releaseSession() {
	resp, err := releaseClient.Post(control+"/release", "application/json", nil)
	if err != nil {
		// Not fatal: the session expires at the end of its lifetime anyway.
		log.Printf("release failed: %v", err)
		return
	}
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	log.Printf("release: %d %v", resp.StatusCode, body)
}

// heartbeat registers this consumer and keeps its jobs claimed for ttl more.
func heartbeat(ctx context.Context, rdb *redis.Client, ttl time.Duration) error {
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, consumers, consumer)
		p.Set(ctx, heartbeatKey, "1", ttl)
		return nil
	})
	return err
}

// claim moves the oldest job into our processing list; ok is false when
// none arrived within claimTimeout.
func claim(ctx context.Context, rdb *redis.Client, vt time.Duration) (payload string, attempt int64, ok bool, err error) {
	// The heartbeat must outlive the blocking read, or the dispatcher would
	// take us for dead while we wait.
	if err = heartbeat(ctx, rdb, vt+claimTimeout); err != nil {
		return "", 0, false, err
	}
	payload, err = rdb.BLMove(ctx, queue, processing, "RIGHT", "LEFT", claimTimeout).Result()
	if errors.Is(err, redis.Nil) {
		return "", 0, false, nil
	}
	if err != nil {
		return "", 0, false, err
	}
	// The job id is the SHA-1 of the payload; the attempts hash counts
	// deliveries.
	attempt, err = rdb.HIncrBy(ctx, attempts, jobID(payload), 1).Result()
	if err != nil {
		return payload, 0, true, err
	}
	return payload, attempt, true, heartbeat(ctx, rdb, vt)
}

// work is the job itself: sleep for the number of seconds in the payload,
// if any.
func work(payload string) error {
	if secs, err := strconv.ParseFloat(strings.TrimSpace(payload), 64); err == nil && secs > 0 && secs <= 3600 {
		time.Sleep(time.Duration(secs * float64(time.Second)))
	}
	if doneFile == "" {
		return nil
	}
	f, err := os.OpenFile(doneFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err = fmt.Fprintf(f, "%s done\n", payload); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// runWithHeartbeat runs work(payload), refreshing the heartbeat every third
// of the visibility timeout.
func runWithHeartbeat(ctx context.Context, rdb *redis.Client, vt time.Duration, payload string) error {
	done := make(chan struct{})
	go func() {
		ticker := time.NewTicker(vt / 3)
		defer ticker.Stop()
		for {
			select {
			case <-done:
				return
			case <-ticker.C:
				if err := heartbeat(ctx, rdb, vt); err != nil {
					log.Printf("heartbeat failed: %v", err)
				}
			}
		}
	}()
	defer close(done)
	return work(payload)
}

func ack(ctx context.Context, rdb *redis.Client, payload string) error {
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.LRem(ctx, processing, 1, payload)
		p.HDel(ctx, attempts, jobID(payload))
		return nil
	})
	return err
}

// fail puts a failed job back at the end consumers take from, to run again.
// A fuller consumer would dead-letter it after N attempts instead (LPUSH
// QUEUE:dead payload and HDEL the attempts entry, as nullworker does).
func fail(ctx context.Context, rdb *redis.Client, payload string) error {
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.LRem(ctx, processing, 1, payload)
		p.RPush(ctx, queue, payload)
		return nil
	})
	return err
}

func main() {
	log.SetFlags(0)
	log.SetOutput(os.Stdout)
	log.SetPrefix("consumer " + consumer + ": ")

	secs, err := strconv.ParseFloat(env("VISIBILITY_TIMEOUT", "30"), 64)
	if err != nil || !(secs >= 1 && secs <= 86400) {
		log.Fatalf("VISIBILITY_TIMEOUT=%q: expected a number of seconds from 1 to 86400", os.Getenv("VISIBILITY_TIMEOUT"))
	}
	vt := time.Duration(secs * float64(time.Second))

	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		log.Fatalf("REDIS_URL=%q: %v", redisURL, err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()

	// SIGTERM (the engine stopping this worker): stop waiting for sessions,
	// but finish the running job first. A job left behind by a kill is handed
	// back by the dispatcher once our heartbeat key expires.
	stopping, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Redis calls of a claimed job do not stop on SIGTERM.
	jobs := context.Background()

	serveHealth()
	for waitForSession(stopping) {
		payload, attempt, ok, err := claim(jobs, rdb, vt)
		if err != nil {
			log.Printf("claim failed: %v", err)
			if !ok {
				releaseSession()
				time.Sleep(time.Second)
				continue
			}
		}
		if !ok {
			log.Printf("no job within %s; releasing the session", claimTimeout)
			releaseSession()
			continue
		}
		log.Printf("job %s (attempt %d)", payload, attempt)
		if err := runWithHeartbeat(jobs, rdb, vt, payload); err != nil {
			log.Printf("job %s failed: %v; putting it back", payload, err)
			if err := fail(jobs, rdb, payload); err != nil {
				log.Printf("put back failed: %v", err)
			}
		} else if err := ack(jobs, rdb, payload); err != nil {
			log.Printf("ack of job %s failed: %v", payload, err)
		} else {
			log.Printf("job %s done", payload)
		}
		releaseSession()
	}
	log.Printf("stopped")
}
