//! SDK behaviour against the in-process fake engine and workers: routing,
//! retries, leases, releases from the worker side, and errors.

mod common;

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use common::{wait_until, FakeEngine, FakeWorker, ACCOUNT_KEY, ENDPOINT, ENDPOINT_KEY};
use nullworker_client::{
    Client, Error, RequestOptions, SessionEnd, SessionOptions, SessionStatus, Step,
};

fn options(lifetime_secs: f64) -> SessionOptions {
    SessionOptions {
        lifetime: Duration::from_secs_f64(lifetime_secs),
        check_interval: Some(Duration::from_millis(100)),
        timeout: Some(Duration::from_secs(20)),
        ..SessionOptions::default()
    }
}

#[tokio::test]
async fn waiting_is_polled_with_the_same_request_idx_until_ready() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    engine.with(|s| s.waiting_polls = 3);
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    assert_eq!(endpoint.id(), 7);

    let session = endpoint.session(options(30.0)).await.unwrap();
    assert_eq!(session.url(), worker.url);
    assert_eq!(worker.open_sessions(), 1);
    let idxs = engine.with(|s| s.route_idxs.clone());
    assert_eq!(
        idxs,
        vec![0, 7, 7, 7],
        "re-polls reuse the engine's request_idx"
    );
    // The endpoint key goes in header, query and body of /route/.
    let keys = engine.with(|s| s.route_keys[0].clone());
    assert_eq!(
        keys,
        (
            ENDPOINT_KEY.into(),
            ENDPOINT_KEY.into(),
            ENDPOINT_KEY.into()
        )
    );
    // The session's auth_data is the READY reply verbatim.
    assert_eq!(session.auth_data()["url"], json!(worker.url));
    assert_eq!(session.auth_data()["__request_id"], json!("r"));
    assert_eq!(session.close().await.unwrap(), SessionEnd::Closed);
    assert_eq!(worker.open_sessions(), 0);
}

#[tokio::test]
async fn a_busy_worker_is_retried_after_rerouting_with_the_same_request_idx() {
    let worker = FakeWorker::start().await;
    worker.with(|s| s.reject_creates = 2);
    let engine = FakeEngine::start(&[&worker]).await;
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let session = endpoint.session(options(30.0)).await.unwrap();
    assert_eq!(worker.with(|s| s.creates), 3);
    assert_eq!(engine.with(|s| s.route_idxs.clone()), vec![0, 7, 7]);
    session.close().await.unwrap();
}

#[tokio::test]
async fn transport_errors_to_a_worker_are_retried_on_another_route() {
    let worker = FakeWorker::start().await;
    // A port nobody listens on: bind, read the port, release it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let engine = FakeEngine::start(&[&worker]).await;
    engine.with(|s| s.workers = vec![dead.clone(), worker.url.clone()]);
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let session = endpoint.session(options(30.0)).await.unwrap();
    assert_eq!(session.url(), worker.url);
    session.close().await.unwrap();
}

#[tokio::test]
async fn retryable_route_statuses_are_retried_and_final_ones_are_not() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    engine.with(|s| s.route_failures = vec![503, 429]);
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let session = endpoint.session(options(30.0)).await.unwrap();
    session.close().await.unwrap();

    engine.with(|s| s.route_failures = vec![400]);
    let err = endpoint.session(options(30.0)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Status {
                step: Step::Route,
                status: 400,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_held_session_outlives_its_lifetime_through_renewals() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    // Renewals leave a quarter of the lifetime as slack: 1 s, for a loaded machine.
    let lifetime = 4.0;
    let session = endpoint.session(options(lifetime)).await.unwrap();
    assert_eq!(session.worker_lifetime(), Duration::from_secs(2));
    let started = std::time::Instant::now();
    // Hold for twice the lifetime, checking it stays open all along.
    while started.elapsed() < Duration::from_secs_f64(lifetime * 2.0) {
        assert_eq!(
            worker.open_sessions(),
            1,
            "released after {:?}",
            started.elapsed()
        );
        assert_eq!(session.status(), SessionStatus::Open);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(session.is_open().await.unwrap());
    assert!(worker.with(|s| s.session_pings) >= 3, "renewed by pings");
    assert_eq!(session.close().await.unwrap(), SessionEnd::Closed);
    assert_eq!(worker.open_sessions(), 0);
    // close() is idempotent.
    assert_eq!(session.close().await.unwrap(), SessionEnd::Closed);
}

#[tokio::test]
async fn a_release_on_the_worker_side_is_noticed_and_not_a_failure() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let session = endpoint.session(options(30.0)).await.unwrap();
    assert_eq!(worker.release_all(), 1);
    let how = tokio::time::timeout(Duration::from_secs(10), session.ended())
        .await
        .expect("release noticed");
    assert_eq!(how, SessionEnd::ReleasedByWorker);
    assert!(how.is_normal());
    assert!(!session.is_open().await.unwrap());
    // Requests on an ended session fail without touching the network.
    let err = session.request("/ping", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::SessionEnded { .. }), "{err}");
    assert_eq!(session.close().await.unwrap(), SessionEnd::ReleasedByWorker);
}

#[tokio::test]
async fn an_in_session_request_on_a_gone_session_marks_it_ended() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let session = endpoint
        .session(SessionOptions {
            check_interval: None,
            ..options(30.0)
        })
        .await
        .unwrap();
    let reply = session.request("/ping", json!({"x": 1})).await.unwrap();
    assert!(reply.ok(), "{reply:?}");
    worker.release_all();
    let err = session.request("/ping", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::SessionEnded { .. }), "{err}");
    assert!(matches!(
        session.status(),
        SessionStatus::Ended {
            how: SessionEnd::ReleasedByWorker,
            ..
        }
    ));
}

#[tokio::test]
async fn a_dropped_session_stops_renewing_and_ends_by_expiry() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let lifetime = 2.0;
    let session = endpoint.session(options(lifetime)).await.unwrap();
    let id = session.id().to_owned();
    let log = CapturedLog::default();
    let dropped_at = std::time::Instant::now();
    {
        let _capture = log.install();
        drop(session);
    }
    let text = log.text();
    assert!(
        text.contains("WARN") && text.contains("dropped without close()") && text.contains(&id),
        "the drop is logged: {text:?}"
    );
    wait_until("the worker to free itself", Duration::from_secs(10), || {
        worker.open_sessions() == 0
    })
    .await;
    let freed_after = dropped_at.elapsed();
    assert!(
        freed_after <= Duration::from_secs_f64(lifetime) + Duration::from_millis(500),
        "freed after {freed_after:?}, lifetime {lifetime} s"
    );
    let pings = worker.with(|s| s.session_pings);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        worker.with(|s| s.session_pings),
        pings,
        "no renewals after drop"
    );
}

#[tokio::test]
async fn without_keep_alive_the_session_expires_and_says_so() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let session = endpoint
        .session(SessionOptions {
            keep_alive: false,
            ..options(1.0)
        })
        .await
        .unwrap();
    assert_eq!(session.worker_lifetime(), Duration::from_secs(1));
    let how = tokio::time::timeout(Duration::from_secs(10), session.ended())
        .await
        .unwrap();
    assert_eq!(how, SessionEnd::Expired);
    assert!(!how.is_normal());
}

#[tokio::test]
async fn reservation_times_out_when_no_worker_ever_comes() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    engine.with(|s| s.never_ready = true);
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let err = endpoint
        .session(SessionOptions {
            timeout: Some(Duration::from_millis(600)),
            ..options(30.0)
        })
        .await
        .unwrap_err();
    match &err {
        Error::Timeout { step, detail, .. } => {
            assert_eq!(*step, Step::Route);
            assert!(detail.contains("waiting: 0 ready, 1 loading"), "{detail}");
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert_eq!(worker.open_sessions(), 0);
}

#[tokio::test]
async fn a_reservation_can_be_cancelled_while_waiting() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    engine.with(|s| s.never_ready = true);
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let cancel = CancellationToken::new();
    let pending = tokio::spawn({
        let endpoint = endpoint.clone();
        let cancel = cancel.clone();
        async move {
            endpoint
                .session(SessionOptions {
                    cancel,
                    ..options(30.0)
                })
                .await
        }
    });
    wait_until("a few polls", Duration::from_secs(10), || {
        engine.with(|s| s.route_idxs.len() >= 2)
    })
    .await;
    cancel.cancel();
    let err = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
}

#[tokio::test]
async fn account_errors_are_clear() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;

    let err = engine
        .client_with_key("wrong")
        .endpoint(ENDPOINT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("api key was rejected"), "{err}");

    let err = engine.client().endpoint("nope").await.unwrap_err();
    assert!(matches!(err, Error::EndpointNotFound { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("\"nope\"") && text.contains(ENDPOINT),
        "{text}"
    );

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let client = Client::builder(ACCOUNT_KEY)
        .autoscaler_url(dead.clone())
        .webserver_url(dead.clone())
        .retry_policy(common::fast_retries())
        .build()
        .unwrap();
    let err = client.endpoint(ENDPOINT).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                step: Step::ListEndpoints,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&dead), "{err}");

    let err = Client::builder(ACCOUNT_KEY)
        .autoscaler_url("localhost:8080")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("localhost:8080"), "{err}");
}

#[tokio::test]
async fn single_requests_and_worker_listing() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    let reply = endpoint
        .request("/ping", json!({}), RequestOptions::default())
        .await
        .unwrap();
    assert!(reply.ok());
    assert_eq!(reply.body, json!({"result": {"ok": true}}));
    assert_eq!(reply.url, worker.url);
    assert_eq!(reply.request_idx, 7);

    let workers = endpoint.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].status, "IDLE");
    assert_eq!(workers[0].url, worker.url);
}

#[tokio::test]
async fn invalid_session_options_are_refused_before_any_call() {
    let worker = FakeWorker::start().await;
    let engine = FakeEngine::start(&[&worker]).await;
    let endpoint = engine.client().endpoint(ENDPOINT).await.unwrap();
    for bad in [
        SessionOptions {
            cost: -1.0,
            ..options(30.0)
        },
        SessionOptions {
            cost: f64::NAN,
            ..options(30.0)
        },
        SessionOptions {
            lifetime: Duration::from_millis(10),
            ..options(30.0)
        },
        // Beyond the bounds workers accept (they would answer 422).
        SessionOptions {
            cost: 1e308,
            ..options(30.0)
        },
        SessionOptions {
            lifetime: Duration::from_secs(31 * 86_400),
            ..options(30.0)
        },
    ] {
        let err = endpoint.session(bad).await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
    let err = endpoint
        .request(
            "/ping",
            json!({}),
            RequestOptions {
                cost: f64::INFINITY,
                ..RequestOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("request cost inf")),
        "{err}"
    );
    assert!(engine.with(|s| s.route_idxs.is_empty()));
}

/// Log lines written while [`CapturedLog::install`]'s guard lives (on this thread).
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
