//! The load generator: keep-alive HTTP/1.1 connections (one TCP connection
//! each, requests written whole, responses parsed with `httparse`) driven in
//! closed loops, recording the latency of every operation.
//!
//! An operation is one request or a short sequence of requests (for instance
//! a session create followed by its end) issued back to back on its own
//! connection. Each connection runs a warm-up, then a measured window; the
//! rate is the number of operations completed in the window divided by the
//! time from the window's start to the last completion.
//!
//! The client side is kept lean (one write and usually one read per request,
//! no task hand-off) so that it adds as little as possible to what it
//! measures. By default the generator's thread also polls its sockets while
//! it waits for answers instead of sleeping, so that on a machine whose idle
//! CPUs halt (most virtual machines) the figures measure the server and not
//! how long this machine takes to wake the client back up. Both apply to
//! every server measured, so side-by-side figures stay comparable.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use axum::http::StatusCode;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::stats::Latencies;

/// Host and port of a plain-HTTP base URL such as `http://127.0.0.1:8000`.
pub fn http_authority(base_url: &str) -> anyhow::Result<&str> {
    let rest = base_url.strip_prefix("http://").ok_or_else(|| {
        anyhow!(
            "URL {base_url:?} is not plain http:// (TLS is not supported by the load generator)"
        )
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("URL {base_url:?} must be scheme://host:port with no path");
    }
    Ok(authority)
}

/// Resolves a plain-HTTP base URL to one socket address.
pub async fn resolve(base_url: &str) -> anyhow::Result<SocketAddr> {
    let authority = http_authority(base_url)?;
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut addrs = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("resolving {with_port}"))?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("{with_port} resolves to no address"))
}

/// A status and body received on a [`Connection`].
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as text, shortened for error messages.
    pub fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut short: String = text.chars().take(200).collect();
        if short.len() < text.len() {
            short.push('…');
        }
        short
    }
}

/// Largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    stream: TcpStream,
    host: String,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// Request bytes, reused.
    out: Vec<u8>,
}

impl Connection {
    /// Opens a TCP connection (no Nagle delay).
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(4096),
            out: Vec::with_capacity(1024),
        })
    }

    /// POSTs a JSON body to `path` and reads the whole reply.
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> anyhow::Result<Reply> {
        self.out.clear();
        self.out.extend_from_slice(b"POST ");
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.out.extend_from_slice(self.host.as_bytes());
        self.out
            .extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        self.out
            .extend_from_slice(body.len().to_string().as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(&body);
        self.stream
            .write_all(&self.out)
            .await
            .with_context(|| format!("sending POST {path}"))?;
        self.read_reply()
            .await
            .with_context(|| format!("reading the reply to POST {path}"))
    }

    /// GETs `path` and reads the whole reply.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.out.clear();
        self.out.extend_from_slice(b"GET ");
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.out.extend_from_slice(self.host.as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.stream
            .write_all(&self.out)
            .await
            .with_context(|| format!("sending GET {path}"))?;
        self.read_reply()
            .await
            .with_context(|| format!("reading the reply to GET {path}"))
    }

    /// Reads one response with a `Content-Length` body (what both the worker
    /// and the reference send); a chunked or unframed body is an error.
    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        let (status, head_len, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) = response.parse(&self.buf)? {
                let status = StatusCode::from_u16(response.code.unwrap_or(0))?;
                let mut body_len = None;
                for header in response.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        let text = std::str::from_utf8(header.value)?;
                        body_len =
                            Some(text.trim().parse::<usize>().with_context(|| {
                                format!("content-length {text:?} is not a number")
                            })?);
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                        bail!(
                            "a {:?} body is not supported: expected content-length",
                            String::from_utf8_lossy(header.value)
                        );
                    }
                }
                let body_len =
                    body_len.ok_or_else(|| anyhow!("the reply has no content-length"))?;
                if body_len > MAX_BODY {
                    bail!("the reply's body of {body_len} bytes is over {MAX_BODY}");
                }
                break (status, head_len, body_len);
            }
            if self.buf.len() > MAX_HEAD {
                bail!("the reply's head is over {MAX_HEAD} bytes");
            }
            self.fill().await?;
        };
        while self.buf.len() < head_len + body_len {
            self.fill().await?;
        }
        let body = Bytes::copy_from_slice(&self.buf[head_len..head_len + body_len]);
        self.buf.drain(..head_len + body_len);
        Ok(Reply { status, body })
    }

    /// Reads more bytes; the peer closing is an error. Cancel-safe: nothing
    /// is added to the buffer unless bytes were read.
    async fn fill(&mut self) -> anyhow::Result<()> {
        self.buf.reserve(4096);
        match self.stream.read_buf(&mut self.buf).await? {
            0 => bail!("the connection was closed"),
            _ => Ok(()),
        }
    }
}

/// Why one operation failed.
#[derive(Debug)]
pub enum OpError {
    /// An unexpected answer; the connection is still usable.
    Unexpected(String),
    /// The connection is broken; its loop stops.
    Broken(String),
}

/// One unit of closed-loop work on one connection.
pub trait Operation: Send + 'static {
    fn run(&mut self) -> impl Future<Output = Result<(), OpError>> + Send;
}

/// Warm-up and measured durations of one phase, and how the generator waits.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub warmup: Duration,
    pub measure: Duration,
    /// Poll the sockets while waiting for answers (else sleep until woken).
    pub poll: bool,
}

/// What one phase measured, over all its connections.
#[derive(Debug, Default)]
pub struct PhaseResult {
    /// Operations completed successfully in the measured window.
    pub completed: u64,
    /// Operations that failed (warm-up included).
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// From the measured window's start to the last completion.
    pub elapsed: Duration,
    /// Latency of every operation completed in the measured window.
    pub latencies: Latencies,
}

impl PhaseResult {
    /// Completed operations per second.
    pub fn per_second(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.completed as f64 / self.elapsed.as_secs_f64()
    }
}

struct LoopOutcome {
    completed: u64,
    errors: u64,
    first_error: Option<String>,
    last_completion: Option<Instant>,
    latencies: Latencies,
}

/// Runs every operation in its own closed loop (next request as soon as
/// the previous one is answered) for `phase.warmup + phase.measure`.
pub async fn run_closed_loop<O: Operation>(operations: Vec<O>, phase: Phase) -> PhaseResult {
    run_closed_loop_from(operations, phase, Instant::now()).await
}

/// [`run_closed_loop`] with the phase starting at `start` (its warm-up
/// ends at `start + phase.warmup`), so that load running beside it can
/// share its measured window.
pub async fn run_closed_loop_from<O: Operation>(
    operations: Vec<O>,
    phase: Phase,
    start: Instant,
) -> PhaseResult {
    let measure_start = start + phase.warmup;
    let end = measure_start + phase.measure;
    // Yielding in a loop makes the runtime check its sockets without
    // blocking on every pass instead of parking its thread.
    let poller = phase.poll.then(|| {
        tokio::spawn(async move {
            while Instant::now() < end {
                tokio::task::yield_now().await;
            }
        })
    });
    let tasks: Vec<JoinHandle<LoopOutcome>> = operations
        .into_iter()
        .map(|mut op| {
            tokio::spawn(async move {
                let mut out = LoopOutcome {
                    completed: 0,
                    errors: 0,
                    first_error: None,
                    last_completion: None,
                    latencies: Latencies::with_capacity(1 << 16),
                };
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let result = op.run().await;
                    let done = Instant::now();
                    match result {
                        Ok(()) if began >= measure_start => {
                            out.completed += 1;
                            out.latencies.record(done - began);
                            out.last_completion = Some(done);
                        }
                        Ok(()) => {}
                        Err(OpError::Unexpected(why)) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(why);
                        }
                        Err(OpError::Broken(why)) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(why);
                            break;
                        }
                    }
                }
                out
            })
        })
        .collect();

    let mut result = PhaseResult::default();
    let mut last = None;
    for task in tasks {
        let out = match task.await {
            Ok(out) => out,
            Err(join) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("load task failed: {join}"));
                continue;
            }
        };
        result.completed += out.completed;
        result.errors += out.errors;
        if result.first_error.is_none() {
            result.first_error = out.first_error;
        }
        last = last.max(out.last_completion);
        result.latencies.merge(out.latencies);
    }
    if let Some(poller) = poller {
        // It stops at the end of the phase; loops that broke off early end it sooner.
        poller.abort();
    }
    result.elapsed = last.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(measure_start)
    });
    result
}
