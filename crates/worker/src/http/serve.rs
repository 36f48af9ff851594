//! Serving a router on a bound listener, over plain TCP or TLS (rustls with
//! ring): one HTTP/1.1 connection task per client, a header-read timeout
//! against slow clients, graceful drain on shutdown, and a per-connection
//! [`ConnCutter`] so a handler can drop its client's connection without an
//! answer (how a closing session cuts its in-flight requests, §9.4). An
//! answer marked [`PollAfter`] starts a [`BusyPoll`] window.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::busy_poll::BusyPoll;
use crate::http::PollAfter;

/// Time a client has to send its request headers (and finish a TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

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
}

/// Accepts connections until `ctx.shutdown`, then lets open ones drain.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    ctx: ServeContext,
) {
    let ServeContext {
        shutdown,
        tracker,
        busy_poll,
    } = ctx;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
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
        let conn = ConnContext {
            router: router.clone(),
            shutdown: shutdown.clone(),
            busy_poll: Arc::clone(&busy_poll),
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
}

async fn serve_connection<S>(stream: S, ctx: ConnContext)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnContext {
        router,
        shutdown,
        busy_poll,
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
