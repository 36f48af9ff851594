//! Serving a router on a bound listener, over plain TCP or TLS (rustls with
//! ring): one HTTP/1.1 connection task per client, at most a fixed number
//! of connections at once (the next one is accepted when one closes, so a
//! flood waits in the kernel's backlog instead of costing memory and file
//! descriptors), a header-read timeout against slow clients that is also the
//! idle timeout of kept-alive connections, graceful drain on shutdown,
//! open connections counted in a [`ConnGauge`], and a per-connection
//! [`ConnCutter`] so a handler can drop its client's connection without an
//! answer (how a closing session cuts its in-flight requests, §9.4). An
//! answer marked [`PollAfter`] starts a [`BusyPoll`] window.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::busy_poll::BusyPoll;
use crate::http::PollAfter;
use crate::memory::{ConnGauge, OpenConn};

/// Time a client has to send its request headers (and finish a TLS
/// handshake). hyper starts it whenever the connection waits for a request,
/// so it is also how long a kept-alive connection may stay idle.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections the loopback control server holds open at once.
pub const CONTROL_MAX_CONNECTIONS: usize = 64;
/// File descriptors kept free for everything but the listeners' connections
/// (reports, health checks, callbacks, the listeners themselves).
const FD_RESERVE: u64 = 128;

/// The connection cap that fits a file-descriptor limit of `fd_limit`:
/// `wanted`, or less if the control server's connections and
/// [`FD_RESERVE`] would not fit beside it (at least 1).
pub fn fit_fd_limit(wanted: usize, fd_limit: u64) -> usize {
    let room = fd_limit.saturating_sub(CONTROL_MAX_CONNECTIONS as u64 + FD_RESERVE);
    wanted
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}

/// The public and HTTP-only listeners' connection cap: `wanted`, after
/// raising the soft file-descriptor limit towards the hard one if `wanted`
/// does not fit (lowered, with a warning, if it still does not).
pub fn connection_cap(wanted: usize) -> usize {
    let need = wanted as u64 + CONTROL_MAX_CONNECTIONS as u64 + FD_RESERVE;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the structure it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return wanted;
    }
    if limit.rlim_cur < need {
        let raised = libc::rlimit {
            rlim_cur: need.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the structure it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    let cap = fit_fd_limit(wanted, limit.rlim_cur);
    if cap < wanted {
        tracing::warn!(
            wanted,
            cap,
            fd_limit = limit.rlim_cur,
            "the file-descriptor limit is too low for the connection cap; lowered"
        );
    }
    cap
}

/// Drops the connection that carried the current request, without a response.
#[derive(Debug, Clone)]
pub struct ConnCutter(CancellationToken);

impl ConnCutter {
    /// Closes the connection as soon as the handler returns.
    pub fn cut(&self) {
        self.0.cancel();
    }
}

/// What the worker's listeners share.
#[derive(Debug, Clone)]
pub struct ServeContext {
    /// Stops accepting and starts draining open connections.
    pub shutdown: CancellationToken,
    /// Connection tasks are spawned here, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Starts a polling window after each answer marked [`PollAfter`].
    pub busy_poll: Arc<BusyPoll>,
    /// Counts open connections (of every listener).
    pub gauge: Arc<ConnGauge>,
}

/// Accepts connections until `ctx.shutdown`, then lets open ones drain.
/// At most `limit`'s permits are open at once: the next connection is
/// accepted only when one of them has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limit: Arc<Semaphore>,
    ctx: ServeContext,
) {
    let ServeContext {
        shutdown,
        tracker,
        busy_poll,
        gauge,
    } = ctx;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut at_limit = false;
    loop {
        if limit.available_permits() == 0 && !at_limit {
            at_limit = true;
            tracing::warn!(
                listener = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                "connection limit reached; new connections wait until one closes"
            );
        }
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            permit = Arc::clone(&limit).acquire_owned() => permit.expect("the connection limit is never closed"),
        };
        if limit.available_permits() > 0 {
            at_limit = false;
        }
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
        let conn = ConnContext {
            router: router.clone(),
            shutdown: shutdown.clone(),
            busy_poll: Arc::clone(&busy_poll),
            _open: (permit, gauge.opened()),
        };
        match &acceptor {
            None => {
                tracker.spawn(serve_connection(stream, conn));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tracker.spawn(async move {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => serve_connection(tls_stream, conn).await,
                        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// What one connection task needs.
struct ConnContext {
    router: Router,
    shutdown: CancellationToken,
    busy_poll: Arc<BusyPoll>,
    /// Its place under the connection limit and in the gauge, given back
    /// when the task ends.
    _open: (OwnedSemaphorePermit, OpenConn),
}

async fn serve_connection<S>(stream: S, ctx: ConnContext)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnContext {
        router,
        shutdown,
        busy_poll,
        _open,
    } = ctx;
    let cut = CancellationToken::new();
    let cutter = ConnCutter(cut.clone());
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(cutter.clone());
            let answer = router.clone().oneshot(req.map(axum::body::Body::new));
            let busy_poll = Arc::clone(&busy_poll);
            async move {
                let response = answer.await;
                // The window runs from the answer, when the client's next
                // request can follow; only answers marked by their handler
                // open one.
                if response
                    .as_ref()
                    .is_ok_and(|r| r.extensions().get::<PollAfter>().is_some())
                {
                    busy_poll.touch();
                }
                response
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        () = cut.cancelled() => {}
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                () = cut.cancelled() => {}
                _ = tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        let cases = [
            // (wanted, fd limit, cap)
            (1024, 1_048_576, 1024),
            (1024, 1024 + 64 + 128, 1024),
            (1024, 1024, 1024 - 64 - 128),
            (1024, 100, 1),
            (1024, 0, 1),
            (usize::MAX, u64::MAX, (u64::MAX - 192) as usize),
        ];
        for (wanted, fd_limit, cap) in cases {
            assert_eq!(
                fit_fd_limit(wanted, fd_limit),
                cap,
                "{wanted} under {fd_limit}"
            );
        }
    }
}
