//! The consumer's calls ([`consumer::session_status`], [`consumer::release`])
//! against a real worker (`nullworker serve`'s library, run in-process on
//! ephemeral loopback ports, with signature checks off).

use std::time::{Duration, Instant};

use nullworker_client::{consumer, Error, Step};
use nullworker_worker::run::{run, Listeners};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A worker running in this process; stopped when dropped.
struct LocalWorker {
    control_url: String,
    public_url: String,
    shutdown: CancellationToken,
}

impl Drop for LocalWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl LocalWorker {
    async fn start() -> Self {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let listeners = Listeners {
            public: bind().await.unwrap(),
            http_only: bind().await.unwrap(),
            control: bind().await.unwrap(),
        };
        let public_url = format!("http://{}", listeners.public.local_addr().unwrap());
        let control_url = format!("http://{}", listeners.control.local_addr().unwrap());
        // Reports go to a port nobody listens on; the worker only logs that.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = nullworker_worker::config::ServeArgs {
            container_id: Some("1".into()),
            report_addr: Some(format!("http://{dead}")),
            worker_port: Some("3000".into()),
            public_port: Some("3000".into()),
            public_ipaddr: Some("127.0.0.1".into()),
            unsecured: Some("true".into()),
            ..Default::default()
        }
        .validate()
        .expect("a valid worker configuration");
        let shutdown = CancellationToken::new();
        tokio::spawn(run(config, listeners, shutdown.clone()));
        Self {
            control_url,
            public_url,
            shutdown,
        }
    }

    /// Opens a session (no signature: the worker runs unsecured); returns its id.
    async fn open(&self) -> String {
        let reply: Value = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/session/create", self.public_url))
            .json(
                &json!({"auth_data": {"url": "http://127.0.0.1:3000", "request_idx": 1},
                          "payload": {"lifetime": 30}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reply["session_id"]
            .as_str()
            .expect("a session id")
            .to_owned()
    }
}

#[tokio::test]
async fn session_status_waits_for_a_reservation_and_sees_the_release() {
    let worker = LocalWorker::start().await;
    let status = consumer::session_status(&worker.control_url, None)
        .await
        .unwrap();
    assert!(!status.held, "{status:?}");
    assert_eq!(status.session_id, None);

    // A wait that nobody ends runs to its end.
    let started = Instant::now();
    let status = consumer::session_status(&worker.control_url, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(!status.held, "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A long poll in flight when the session opens returns with it.
    let waiting = tokio::spawn({
        let url = worker.control_url.clone();
        async move { consumer::session_status(&url, Some(Duration::from_secs(60))).await }
    });
    let id = worker.open().await;
    let status = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the long poll answered")
        .unwrap()
        .unwrap();
    assert!(status.held, "{status:?}");
    assert_eq!(status.session_id.as_deref(), Some(id.as_str()));
    assert_eq!(status.open_sessions, 1);
    let (since, expiration) = (status.since.unwrap(), status.expiration.unwrap());
    assert!((expiration - since - 30.0).abs() < 1e-6, "{status:?}");

    let released = consumer::release(&worker.control_url).await.unwrap();
    assert_eq!(released.session_ids, Some(vec![id]));
    let status = consumer::session_status(&worker.control_url, None)
        .await
        .unwrap();
    assert!(!status.held, "{status:?}");
}

#[tokio::test]
async fn session_status_errors_name_the_step_and_the_value() {
    let err = consumer::session_status("http://127.0.0.1:9", Some(Duration::from_secs(3_601)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("3601.000"), "{err}");

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = consumer::session_status(&format!("http://{dead}"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                step: Step::SessionStatus,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("GET /session"), "{err}");
}
