//! The load generator: keep-alive HTTP/1.1 connections (hyper 1 client, one
//! TCP connection each) driven in closed loops, recording the latency of
//! every operation.
//!
//! An operation is one request or a short sequence of requests (for instance
//! a session create followed by its end) issued back to back on its own
//! connection. Each connection runs a warm-up, then a measured window; the
//! rate is the number of operations completed in the window divided by the
//! time from the window's start to the last completion.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
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

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
    driver: JoinHandle<()>,
}

impl Connection {
    /// Opens a TCP connection (no Nagle delay) and performs the HTTP/1.1 handshake.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
        let driver = tokio::spawn(async move {
            // The connection ends when the sender is dropped or the peer
            // closes; the next request then reports the error.
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            host: HeaderValue::from_str(&addr.to_string())?,
            driver,
        })
    }

    /// POSTs a JSON body to `path` and reads the whole reply.
    pub async fn post_json(&mut self, path: &str, body: Bytes) -> anyhow::Result<Reply> {
        let request = Request::post(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))?;
        self.sender
            .ready()
            .await
            .with_context(|| format!("connection closed before POST {path}"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the reply to POST {path}"))?
            .to_bytes();
        Ok(Reply { status, body })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
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

/// Warm-up and measured durations of one phase.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub warmup: Duration,
    pub measure: Duration,
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
    let start = Instant::now();
    let measure_start = start + phase.warmup;
    let end = measure_start + phase.measure;
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
    result.elapsed = last.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(measure_start)
    });
    result
}
