//! Handlers of the loopback control server (PROTOCOL.md §5.8): `POST /release`
//! closes every open session without `session_auth`; `GET /health` is the
//! stub health target when `BACKEND_HEALTH_URL` is unset; `GET /session`
//! (our extension) tells whether this worker holds a session, and with
//! `?wait=S` long-polls until it does.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use nullworker_protocol::{ReleaseResponse, SessionStatusResponse};

use super::{error, json};
use crate::app::{App, CloseReason, CALLBACK_TIMEOUT};

/// `POST /release` (body ignored, no auth).
pub async fn release(State(app): State<Arc<App>>) -> Response {
    if !app.is_ready() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &ReleaseResponse::not_released(ReleaseResponse::REASON_NOT_READY),
        );
    }
    let closed = app.close_all(CloseReason::Release, CALLBACK_TIMEOUT).await;
    if closed.is_empty() {
        json(
            StatusCode::OK,
            &ReleaseResponse::not_released(ReleaseResponse::REASON_NO_SESSION),
        )
    } else {
        json(StatusCode::OK, &ReleaseResponse::released(closed))
    }
}

/// `GET /health`: 200 `ok` (text).
pub async fn health() -> &'static str {
    "ok"
}

/// `GET /session[?wait=SECONDS]`: 200 [`SessionStatusResponse`], at once
/// when a session is held or no `wait` is given, else when one opens or
/// `wait` passes; 400 naming a bad query. Answered the same way before the
/// worker is ready (there is no 503 as for `/release`).
pub async fn session(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let wait = match parse_wait(query.as_deref()) {
        Ok(wait) => wait,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    json(StatusCode::OK, &app.session_status(wait).await)
}

/// The `wait` of a `GET /session` query string: absent means zero; otherwise
/// a finite number of seconds from 0 to [`SessionStatusResponse::MAX_WAIT_SECS`].
/// Any other parameter is refused, so that a misspelt `wait` does not turn a
/// long poll into a busy loop.
pub fn parse_wait(query: Option<&str>) -> Result<Duration, String> {
    let max = SessionStatusResponse::MAX_WAIT_SECS;
    let mut wait: Option<Duration> = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if name != "wait" {
            return Err(format!(
                "unknown query parameter {name:?}: expected only wait=SECONDS"
            ));
        }
        if wait.is_some() {
            return Err("wait is given more than once: expected it once".to_owned());
        }
        let secs = value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|secs| secs.is_finite() && (0.0..=max).contains(secs))
            .ok_or_else(|| {
                format!("wait={value:?}: expected a number of seconds from 0 to {max}")
            })?;
        wait = Some(Duration::from_secs_f64(secs));
    }
    Ok(wait.unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    async fn call(app: &Arc<App>, method: &str, uri: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = crate::http::control_router(Arc::clone(app))
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn session_route_answers_before_readiness_and_refuses_bad_queries() {
        let args = crate::config::ServeArgs {
            container_id: Some("1".into()),
            report_addr: Some("http://127.0.0.1:9".into()),
            worker_port: Some("3000".into()),
            public_port: Some("3000".into()),
            public_ipaddr: Some("127.0.0.1".into()),
            ..Default::default()
        };
        let app = App::new(
            args.validate().unwrap(),
            Clock::anchored(0.0),
            CancellationToken::new(),
        );
        assert!(!app.is_ready());
        assert_eq!(
            call(&app, "GET", "/session").await,
            (StatusCode::OK, json!({"held": false, "open_sessions": 0}))
        );
        let (status, body) = call(&app, "GET", "/session?wait=7200").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("\"7200\"") && message.contains("3600"),
            "{body}"
        );
        let (status, _) = call(&app, "POST", "/session").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        // /release keeps its reference answer before readiness.
        assert_eq!(
            call(&app, "POST", "/release").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"released": false, "reason": "backend not ready"})
            )
        );
    }

    #[test]
    fn wait_values() {
        for (query, expected) in [
            (None, Duration::ZERO),
            (Some(""), Duration::ZERO),
            (Some("wait=0"), Duration::ZERO),
            (Some("wait=2.5"), Duration::from_millis(2_500)),
            (Some("wait=3600"), Duration::from_secs(3_600)),
            (Some("wait=1e1"), Duration::from_secs(10)),
        ] {
            assert_eq!(parse_wait(query), Ok(expected), "{query:?}");
        }
    }

    #[test]
    fn bad_waits_name_the_value_and_the_range() {
        for (query, named) in [
            ("wait=-1", "\"-1\""),
            ("wait=3600.5", "\"3600.5\""),
            ("wait=NaN", "\"NaN\""),
            ("wait=inf", "\"inf\""),
            ("wait=", "\"\""),
            ("wait=soon", "\"soon\""),
            ("wait", "\"\""),
        ] {
            let err = parse_wait(Some(query)).unwrap_err();
            assert!(
                err.contains(named) && err.contains("from 0 to 3600"),
                "{query}: {err}"
            );
        }
        let err = parse_wait(Some("wiat=5")).unwrap_err();
        assert!(err.contains("\"wiat\"") && err.contains("wait="), "{err}");
        assert!(parse_wait(Some("wait=1&wait=2")).is_err());
    }
}
