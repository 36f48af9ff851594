//! Serving the engine's router on its listener: one HTTP/1.1 connection task
//! per client, with the limits that keep slow or idle clients from starving
//! the others (the file descriptors and connection slots of the engine are
//! what `/route/`, `/pubkey/` and worker reports share):
//!
//! * a header timeout: a connection gets [`ServeLimits::header_timeout`] to
//!   send a request's headers, counted from when it opens or from its
//!   previous answer, so a client trickling headers and an idle keep-alive
//!   connection are both closed after it;
//! * a request timeout: a request whose handler (reading its body
//!   included) takes longer than [`ServeLimits::request_timeout`] is
//!   answered 408 and its connection closed;
//! * a cap on open connections, derived from the file-descriptor limit: at
//!   the cap, a new connection closes the connection idle the longest (one
//!   waiting for request headers), and if every connection is busy in a
//!   handler the new one is answered 503 at once;
//! * a body limit: a declared `Content-Length` above
//!   [`ServeLimits::max_body`] is answered 413 before any of the body is
//!   read (a chunked body is cut at the limit by the router's extractors).
//!
//! It owns the connections, not the routes (`api`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::http_error::json_response;

/// Time a client has to send a request's headers (and an idle keep-alive
/// connection stays open).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time a request may take, reading its body included (`/route/`
/// holds at most 8 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body (reports listing thousands of requests fit).
pub const DEFAULT_MAX_BODY: usize = 2 << 20;
/// Most connections whatever the file-descriptor limit.
pub const MAX_CONNECTIONS_CEILING: usize = 8192;
/// Time open connections get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The limits of the engine's HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Time to send a request's headers, from the connection's start or its
    /// previous answer.
    pub header_timeout: Duration,
    /// Time a request may take, body included.
    pub request_timeout: Duration,
    /// Open connections at most (`None`: derived from the file-descriptor
    /// limit by [`connection_cap`]).
    pub max_connections: Option<usize>,
    /// Largest request body in bytes.
    pub max_body: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: None,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// The connection cap for a soft file-descriptor limit of `nofile`: half
/// of it (the other half is for the database, logs, listeners and the
/// processes of workers), at least 16 and at most
/// [`MAX_CONNECTIONS_CEILING`].
pub fn connection_cap(nofile: u64) -> usize {
    let half = usize::try_from(nofile / 2).unwrap_or(usize::MAX);
    half.clamp(16, MAX_CONNECTIONS_CEILING)
}

/// Raises the soft file-descriptor limit to the hard one (best effort) and
/// returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write or read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// One open connection as the cap sees it.
#[derive(Debug)]
struct Slot {
    /// Requests in a handler now.
    busy: Arc<AtomicUsize>,
    /// Milliseconds since the table's epoch of the last request start or end.
    last_active: Arc<AtomicU64>,
    /// Closes the connection.
    evict: CancellationToken,
}

/// The open connections.
#[derive(Debug)]
struct Connections {
    epoch: Instant,
    next_id: u64,
    open: HashMap<u64, Slot>,
}

impl Connections {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// At the cap: closes the connection idle the longest; `false` if every
    /// connection is in a handler. O(connections), only at the cap.
    fn evict_idlest(&mut self) -> bool {
        let victim = self
            .open
            .iter()
            .filter(|(_, s)| s.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|(id, s)| (s.last_active.load(Ordering::Relaxed), **id))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.open.remove(&id)) {
            Some(slot) => {
                slot.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the table when its task ends.
struct SlotGuard {
    table: Arc<Mutex<Connections>>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.table).open.remove(&self.id);
    }
}

fn lock(table: &Mutex<Connections>) -> std::sync::MutexGuard<'_, Connections> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a request as in a handler while alive.
struct BusyGuard {
    busy: Arc<AtomicUsize>,
    last_active: Arc<AtomicU64>,
    epoch: Instant,
}

impl BusyGuard {
    fn new(busy: Arc<AtomicUsize>, last_active: Arc<AtomicU64>, epoch: Instant) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        let guard = Self {
            busy,
            last_active,
            epoch,
        };
        guard.touch();
        guard
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active.store(ms, Ordering::Relaxed);
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.touch();
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until `shutdown`, then lets open ones drain (for up
/// to 3 s); connection tasks run on `tracker`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let cap = limits
        .max_connections
        .unwrap_or_else(|| connection_cap(raise_fd_limit()));
    tracing::debug!(
        cap,
        header_timeout = ?limits.header_timeout,
        "serving with a connection cap"
    );
    let router = router.layer(axum::extract::DefaultBodyLimit::max(limits.max_body));
    let table = Arc::new(Mutex::new(Connections {
        epoch: Instant::now(),
        next_id: 0,
        open: HashMap::new(),
    }));
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, busy, last_active, evict, epoch) = {
            let mut t = lock(&table);
            if t.open.len() >= cap && !t.evict_idlest() {
                drop(t);
                refuse(stream);
                continue;
            }
            let id = t.next_id;
            t.next_id += 1;
            let busy = Arc::new(AtomicUsize::new(0));
            let last_active = Arc::new(AtomicU64::new(t.now_ms()));
            let evict = CancellationToken::new();
            t.open.insert(
                id,
                Slot {
                    busy: busy.clone(),
                    last_active: last_active.clone(),
                    evict: evict.clone(),
                },
            );
            (id, busy, last_active, evict, t.epoch)
        };
        let guard = SlotGuard {
            table: table.clone(),
            id,
        };
        let conn = Conn {
            router: router.clone(),
            limits,
            shutdown: shutdown.clone(),
            evict,
            busy,
            last_active,
            epoch,
        };
        tracker.spawn(async move {
            let _guard = guard;
            serve_connection(stream, conn).await;
        });
    }
}

/// Answers 503 on a connection beyond the cap and closes it, without
/// waiting (the socket's send buffer is empty: one write suffices).
fn refuse(stream: TcpStream) {
    const BODY: &str = r#"{"error_msg":"the engine is at its connection limit and every connection is busy; retry shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(answer.as_bytes());
    tracing::debug!("connection refused: at the connection cap, none idle");
}

/// What one connection task needs.
struct Conn {
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
    evict: CancellationToken,
    busy: Arc<AtomicUsize>,
    last_active: Arc<AtomicU64>,
    epoch: Instant,
}

/// The 413 answer for a declared body over `max`, if the request has one.
fn declared_too_large(headers: &axum::http::HeaderMap, max: usize) -> Option<Response> {
    let value = headers.get(header::CONTENT_LENGTH)?;
    let len: u64 = value.to_str().ok()?.trim().parse().ok()?;
    (len > max as u64).then(|| {
        let mut resp = json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error_msg": format!("request body of {len} bytes: expected at most {max} bytes")}),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        resp
    })
}

async fn serve_connection(stream: TcpStream, conn: Conn) {
    let Conn {
        router,
        limits,
        shutdown,
        evict,
        busy,
        last_active,
        epoch,
    } = conn;
    let timed_out = CancellationToken::new();
    let cut = timed_out.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = BusyGuard::new(busy.clone(), last_active.clone(), epoch);
        let router = router.clone();
        let cut = cut.clone();
        async move {
            let _guard = guard;
            if let Some(resp) = declared_too_large(req.headers(), limits.max_body) {
                return Ok::<_, Infallible>(resp);
            }
            let answer = router.oneshot(req.map(axum::body::Body::new));
            match tokio::time::timeout(limits.request_timeout, answer).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(never)) => match never {},
                Err(_) => {
                    cut.cancel();
                    let msg = format!(
                        "request not completed within {} s",
                        limits.request_timeout.as_secs_f64()
                    );
                    Ok(json_response(
                        StatusCode::REQUEST_TIMEOUT,
                        &json!({ "error_msg": msg }),
                    ))
                }
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        // Evicted while idle: no handler runs, nothing to finish.
        () = evict.cancelled() => {}
        () = timed_out.cancelled() => {
            // A request timed out: its 408 goes out, then the connection
            // closes (its body may be half read).
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await;
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A server with `limits` over a router with `GET /pubkey/`, `POST
    /// /echo` (reads its body) and `GET /hold` (reports on `entered`, then
    /// never answers).
    async fn server(
        limits: ServeLimits,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<()>, CancellationToken) {
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let router = Router::new()
            .route("/pubkey/", get(|| async { "PEM" }))
            .route("/echo", post(|body: axum::body::Bytes| async move { body }))
            .route(
                "/hold",
                get(move || {
                    let _ = entered_tx.send(());
                    std::future::pending::<&'static str>()
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            router,
            limits,
            shutdown.clone(),
            TaskTracker::new(),
        ));
        (addr, entered, shutdown)
    }

    fn limits(cap: usize, header_timeout: Duration) -> ServeLimits {
        ServeLimits {
            header_timeout,
            request_timeout: Duration::from_secs(60),
            max_connections: Some(cap),
            max_body: 1024,
        }
    }

    /// Everything the server sends until it closes the connection.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
            .await
            .expect("the server did not close the connection in time")
            .unwrap_or(0);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// One request on a fresh connection (closed after the answer).
    async fn request(addr: SocketAddr, head: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        read_to_close(&mut stream).await
    }

    #[test]
    fn connection_cap_is_half_the_fd_limit_within_bounds() {
        for (nofile, cap) in [
            (0, 16),
            (20, 16),
            (256, 128),
            (1024, 512),
            (20_000, 8192),
            (u64::MAX, 8192),
        ] {
            assert_eq!(connection_cap(nofile), cap, "nofile {nofile}");
        }
    }

    #[tokio::test]
    async fn a_connection_trickling_its_headers_is_closed_after_the_header_timeout() {
        let (addr, _entered, _stop) = server(limits(64, Duration::from_millis(300))).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /pubkey/ HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let answer = read_to_close(&mut stream).await;
        assert!(!answer.contains("PEM"), "{answer}");
        assert!(started.elapsed() >= Duration::from_millis(250));
        // An idle keep-alive connection is closed too, after its answer.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /pubkey/ HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("PEM"), "{answer}");
    }

    #[tokio::test]
    async fn idle_connections_at_the_cap_make_way_for_a_new_client() {
        // Header timeout far away: only the cap can free a slot.
        let (addr, _entered, _stop) = server(limits(4, Duration::from_secs(600))).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /pub").await.unwrap();
            idle.push(s);
        }
        for _ in 0..3 {
            let answer = request(
                addr,
                "GET /pubkey/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
        // The first made way by closing the connection idle the longest;
        // the next ones found the slot it freed.
        let answer = read_to_close(&mut idle[0]).await;
        assert!(answer.is_empty(), "{answer}");
    }

    #[tokio::test]
    async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused_at_once() {
        let (addr, mut entered, _stop) = server(limits(2, Duration::from_secs(600))).await;
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            tokio::time::timeout(DEADLINE, entered.recv())
                .await
                .unwrap()
                .unwrap();
            busy.push(s);
        }
        let answer = request(addr, "GET /pubkey/ HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("connection limit"), "{answer}");
        // Once one is gone, new clients are served again.
        drop(busy.pop());
        let mut answer = String::new();
        for _ in 0..500 {
            answer = request(
                addr,
                "GET /pubkey/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_declared_oversized_body_is_refused_before_it_is_sent() {
        let (addr, _entered, _stop) = server(limits(64, Duration::from_secs(600))).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // Headers only: the body is never sent.
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("100000000 bytes: expected at most 1024"),
            "{answer}"
        );
        // Within the limit, the body is read.
        let answer = request(
            addr,
            "POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"),
            "{answer}"
        );
        // A chunked body over the limit is cut by the extractor.
        let big = "x".repeat(2000);
        let answer = request(
            addr,
            &format!("POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n", big.len()),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    #[tokio::test]
    async fn a_request_slower_than_the_request_timeout_gets_408() {
        let mut l = limits(64, Duration::from_secs(600));
        l.request_timeout = Duration::from_millis(200);
        let (addr, _entered, _stop) = server(l).await;
        let answer = request(addr, "GET /hold HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        // A body that never comes counts too.
        let answer = request(
            addr,
            "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}
