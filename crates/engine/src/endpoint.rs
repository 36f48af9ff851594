//! Endpoint settings as the engine stores them: the §11.1 parameters with our
//! defaults filled in and validated ([`EndpointSettings`]), the worker
//! template of an endpoint ([`WorkerTemplate`], its "workergroup"), the
//! `seed` preset, and the conversion to the web API's [`EndpointRecord`].
//! Autoscaling decisions live in `policy`, not here.

use std::collections::BTreeMap;

use nullworker_protocol::messages::{EndpointParams, EndpointRecord, EndpointState};

use crate::policy::EndpointPolicy;
use serde::{Deserialize, Serialize};

/// Largest accepted `max_workers` (the policy's limit, the one limit).
pub const MAX_MAX_WORKERS: i64 = crate::policy::MAX_WORKERS_LIMIT as i64;

/// A rejected parameter: which field, and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    /// Wire name of the field.
    pub field: &'static str,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ParamError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// The §11.1 parameters of one endpoint, complete and validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointSettings {
    /// Hard cap on non-destroyed workers (≥ 1).
    pub max_workers: u32,
    /// Minimum number of workers kept (`min_workers`).
    pub cold_workers: u32,
    /// Floor on anticipated load.
    pub min_load: f64,
    /// Total capacity target.
    pub min_cold_load: f64,
    /// Capacity = load ÷ `target_util`, in (0, 1].
    pub target_util: f64,
    /// Total capacity = active load × `cold_mult`.
    pub cold_mult: f64,
    /// Per-worker routing limit (seconds of implied queue).
    pub max_queue_time: f64,
    /// Scale-up trigger (seconds waited).
    pub target_queue_time: f64,
    /// Scale-to-zero gate: `None` unset, 0 none, < 0 never, > 0 seconds.
    pub inactivity_timeout: Option<f64>,
    /// `active`, `suspended` or `stopped`.
    pub endpoint_state: EndpointState,
    /// Route-service deployment name (informative locally).
    pub autoscaler_instance: String,
}

impl Default for EndpointSettings {
    /// The [ours] defaults of §11.1, as [`EndpointPolicy::default`] holds them.
    fn default() -> Self {
        Self::from_policy(&EndpointPolicy::default())
    }
}

impl EndpointSettings {
    /// The settings whose policy is `p` (engine knobs aside).
    pub fn from_policy(p: &EndpointPolicy) -> Self {
        Self {
            max_workers: p.max_workers,
            cold_workers: p.cold_workers,
            min_load: p.min_load,
            min_cold_load: p.min_cold_load,
            target_util: p.target_util,
            cold_mult: p.cold_mult,
            max_queue_time: p.max_queue_time,
            target_queue_time: p.target_queue_time,
            inactivity_timeout: p.inactivity_timeout,
            endpoint_state: p.state,
            autoscaler_instance: "local".to_owned(),
        }
    }

    /// These settings as wire parameters (every field set).
    pub fn params(&self) -> EndpointParams {
        EndpointParams {
            max_workers: Some(i64::from(self.max_workers)),
            cold_workers: Some(i64::from(self.cold_workers)),
            min_load: Some(self.min_load),
            min_cold_load: Some(self.min_cold_load),
            target_util: Some(self.target_util),
            cold_mult: Some(self.cold_mult),
            max_queue_time: Some(self.max_queue_time),
            target_queue_time: Some(self.target_queue_time),
            inactivity_timeout: self.inactivity_timeout,
            ..EndpointParams::default()
        }
    }
}

/// Named parameter presets for `nullworker endpoint create --preset`.
pub fn preset(name: &str) -> Option<EndpointParams> {
    match name {
        // Defined once, by the policy.
        "seed" => Some(EndpointSettings::from_policy(&EndpointPolicy::seed()).params()),
        _ => None,
    }
}

/// Names accepted by [`preset`].
pub const PRESETS: &[&str] = &["seed"];

fn finite(field: &'static str, v: f64) -> Result<f64, ParamError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(ParamError::new(
            field,
            format!("{v} is not a finite number"),
        ))
    }
}

fn non_negative(field: &'static str, v: f64) -> Result<f64, ParamError> {
    let v = finite(field, v)?;
    if v < 0.0 {
        return Err(ParamError::new(
            field,
            format!("{v} is negative: expected a number >= 0"),
        ));
    }
    Ok(v)
}

fn count(field: &'static str, v: i64, min: i64) -> Result<u32, ParamError> {
    if v < min || v > MAX_MAX_WORKERS {
        return Err(ParamError::new(
            field,
            format!("{v} is out of range: expected an integer from {min} to {MAX_MAX_WORKERS}"),
        ));
    }
    Ok(v as u32)
}

impl EndpointSettings {
    /// These settings with the fields present in `params` replaced, validated
    /// as a whole (so `cold_workers <= max_workers` holds after an update).
    pub fn merged(&self, params: &EndpointParams) -> Result<Self, ParamError> {
        let mut s = self.clone();
        if let Some(v) = params.max_workers {
            s.max_workers = count("max_workers", v, 1)?;
        }
        if let Some(v) = params.cold_workers {
            s.cold_workers = count("cold_workers", v, 0)?;
        }
        if let Some(v) = params.min_load {
            s.min_load = non_negative("min_load", v)?;
        }
        if let Some(v) = params.min_cold_load {
            s.min_cold_load = non_negative("min_cold_load", v)?;
        }
        if let Some(v) = params.target_util {
            s.target_util = finite("target_util", v)?;
        }
        if let Some(v) = params.cold_mult {
            s.cold_mult = non_negative("cold_mult", v)?;
        }
        if let Some(v) = params.max_queue_time {
            s.max_queue_time = non_negative("max_queue_time", v)?;
        }
        if let Some(v) = params.target_queue_time {
            s.target_queue_time = non_negative("target_queue_time", v)?;
        }
        if let Some(v) = params.inactivity_timeout {
            s.inactivity_timeout = Some(finite("inactivity_timeout", v)?);
        }
        if let Some(v) = params.endpoint_state {
            s.endpoint_state = v;
        }
        if let Some(v) = &params.autoscaler_instance {
            s.autoscaler_instance = v.clone();
        }
        if let Some(v) = params.overrecruit_ratio {
            non_negative("overrecruit_ratio", v)?;
        }
        s.validate()?;
        // The policy's rules (ranges of durations and loads) are the last
        // link of the chain: one set of limits for every entry point.
        s.policy(
            EndpointPolicy::default().stale_after,
            EndpointPolicy::default().scale_down_delay,
        )
        .validate()
        .map_err(|e| ParamError::new(e.field(), e.to_string()))?;
        Ok(s)
    }

    /// The autoscaling policy of these settings under the engine's knobs.
    pub fn policy(&self, stale_after: f64, scale_down_delay: f64) -> EndpointPolicy {
        EndpointPolicy {
            max_workers: self.max_workers,
            cold_workers: self.cold_workers,
            min_load: self.min_load,
            min_cold_load: self.min_cold_load,
            target_util: self.target_util,
            cold_mult: self.cold_mult,
            max_queue_time: self.max_queue_time,
            target_queue_time: self.target_queue_time,
            inactivity_timeout: self.inactivity_timeout,
            state: self.endpoint_state,
            scale_down_delay,
            stale_after,
        }
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(self.target_util > 0.0 && self.target_util <= 1.0) {
            return Err(ParamError::new(
                "target_util",
                format!(
                    "{} is out of range: expected a number in (0, 1]",
                    self.target_util
                ),
            ));
        }
        if self.max_workers < 1 {
            return Err(ParamError::new("max_workers", "0: expected at least 1"));
        }
        if self.cold_workers > self.max_workers {
            return Err(ParamError::new(
                "cold_workers",
                format!(
                    "{} is above max_workers {}: expected cold_workers <= max_workers",
                    self.cold_workers, self.max_workers
                ),
            ));
        }
        if self.target_queue_time > self.max_queue_time {
            return Err(ParamError::new(
                "target_queue_time",
                format!(
                    "{} is above max_queue_time {}: expected target_queue_time <= max_queue_time",
                    self.target_queue_time, self.max_queue_time
                ),
            ));
        }
        Ok(())
    }

    /// The web API view of an endpoint with these settings.
    pub fn record(&self, id: i64, name: &str, api_key: &str, created_at: f64) -> EndpointRecord {
        EndpointRecord {
            id,
            endpoint_name: name.to_owned(),
            api_key: api_key.to_owned(),
            user_id: crate::USER_ID,
            created_at,
            cold_workers: Some(i64::from(self.cold_workers)),
            max_workers: Some(i64::from(self.max_workers)),
            min_load: Some(self.min_load),
            min_cold_load: Some(self.min_cold_load),
            target_util: Some(self.target_util),
            cold_mult: Some(self.cold_mult),
            max_queue_time: Some(self.max_queue_time),
            target_queue_time: Some(self.target_queue_time),
            endpoint_state: Some(self.endpoint_state),
            inactivity_timeout: self.inactivity_timeout,
            autoscaler_instance: Some(self.autoscaler_instance.clone()),
            auto_delete_in_seconds: None,
            auto_delete_due_24h: false,
        }
    }
}

/// Checks an endpoint name: `^[a-zA-Z0-9_-]+$`, at most 255 characters.
pub fn validate_name(name: &str) -> Result<(), ParamError> {
    if name.is_empty() {
        return Err(ParamError::new(
            "endpoint_name",
            "empty: expected 1 to 255 characters of [a-zA-Z0-9_-]",
        ));
    }
    if name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ParamError::new(
            "endpoint_name",
            format!("{name:?}: expected 1 to 255 characters of [a-zA-Z0-9_-]"),
        ));
    }
    Ok(())
}

/// How the workers of an endpoint are launched (the local "workergroup").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTemplate {
    /// Shell command line of the worker; `None` ⇒ the engine's default
    /// (`nullworker serve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_command: Option<String>,
    /// Shell command line of a consumer started beside each worker with the
    /// same environment; `None` ⇒ no consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_command: Option<String>,
    /// Extra environment for worker and consumer (e.g. `BACKEND_HEALTH_URL`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Path of the consumer's health endpoint (e.g. `/health`), served on
    /// `NULL_CONSUMER_PORT`: the worker is then given
    /// `BACKEND_HEALTH_URL=http://127.0.0.1:<NULL_CONSUMER_PORT><path>`
    /// unless `env` sets `BACKEND_HEALTH_URL`. Needs a `consumer_command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_health_path: Option<String>,
}

impl WorkerTemplate {
    /// Checks commands and environment names.
    pub fn validate(&self) -> Result<(), ParamError> {
        if let Some(cmd) = &self.worker_command {
            if cmd.trim().is_empty() {
                return Err(ParamError::new(
                    "worker_command",
                    "empty: expected a shell command line",
                ));
            }
        }
        if let Some(cmd) = &self.consumer_command {
            if cmd.trim().is_empty() {
                return Err(ParamError::new(
                    "consumer_command",
                    "empty: expected a shell command line",
                ));
            }
        }
        if let Some(path) = &self.consumer_health_path {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ParamError::new(
                    "consumer_health_path",
                    format!("{path:?}: expected a URL path starting with / and without spaces"),
                ));
            }
            if self.consumer_command.is_none() {
                return Err(ParamError::new(
                    "consumer_health_path",
                    format!(
                        "{path:?} is set without consumer_command: expected a consumer to serve it"
                    ),
                ));
            }
        }
        for (key, value) in &self.env {
            let ok = !key.is_empty()
                && !key.as_bytes()[0].is_ascii_digit()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(ParamError::new(
                    "env",
                    format!("variable name {key:?}: expected [A-Za-z_][A-Za-z0-9_]*"),
                ));
            }
            if value.contains('\0') {
                return Err(ParamError::new(
                    "env",
                    format!("value of {key} contains a NUL byte"),
                ));
            }
        }
        Ok(())
    }

    /// The `BACKEND_HEALTH_URL` the engine gives a worker whose consumer
    /// listens on `consumer_port`: derived from [`Self::consumer_health_path`]
    /// when there is a consumer and `env` does not set one itself.
    pub fn consumer_health_url(&self, consumer_port: u16) -> Option<String> {
        let path = self.consumer_health_path.as_deref()?;
        if self.consumer_command.is_none() || self.env.contains_key("BACKEND_HEALTH_URL") {
            return None;
        }
        Some(format!("http://127.0.0.1:{consumer_port}{path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> EndpointParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_seed_applies() {
        let base = EndpointSettings::default();
        base.validate().unwrap();
        let seed = base.merged(&preset("seed").unwrap()).unwrap();
        assert_eq!(seed.target_util, 1.0);
        assert_eq!(seed.max_queue_time, 1.0);
        assert_eq!(seed.target_queue_time, 0.5);
        assert_eq!(seed.inactivity_timeout, Some(10.0));
        assert_eq!(seed.cold_workers, 0);
    }

    #[test]
    fn bad_values_name_the_field() {
        let base = EndpointSettings::default();
        for (json, field) in [
            (r#"{"target_util": 0}"#, "target_util"),
            (r#"{"target_util": 1.5}"#, "target_util"),
            (r#"{"max_workers": 0}"#, "max_workers"),
            (r#"{"max_workers": -3}"#, "max_workers"),
            (r#"{"max_workers": 100000000}"#, "max_workers"),
            (r#"{"cold_workers": 30}"#, "cold_workers"),
            (r#"{"min_load": -1}"#, "min_load"),
            (r#"{"cold_mult": -0.5}"#, "cold_mult"),
            (r#"{"target_queue_time": 40}"#, "target_queue_time"),
            (r#"{"max_queue_time": -1}"#, "max_queue_time"),
        ] {
            let err = base.merged(&params(json)).unwrap_err();
            assert_eq!(err.field, field, "{json}: {err}");
        }
    }

    #[test]
    fn negative_inactivity_timeout_is_allowed() {
        let s = EndpointSettings::default()
            .merged(&params(r#"{"inactivity_timeout": -1}"#))
            .unwrap();
        assert_eq!(s.inactivity_timeout, Some(-1.0));
    }

    #[test]
    fn names() {
        validate_name("null-test_1").unwrap();
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn templates() {
        let mut t = WorkerTemplate::default();
        t.validate().unwrap();
        t.env.insert("1BAD".into(), "x".into());
        assert_eq!(t.validate().unwrap_err().field, "env");
    }

    #[test]
    fn consumer_health_path_is_checked_and_derives_the_health_url() {
        let with =
            |consumer: Option<&str>, path: Option<&str>, env: &[(&str, &str)]| WorkerTemplate {
                consumer_command: consumer.map(str::to_owned),
                consumer_health_path: path.map(str::to_owned),
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            };
        let t = with(Some("./consume"), Some("/health"), &[]);
        t.validate().unwrap();
        assert_eq!(
            t.consumer_health_url(41_234).as_deref(),
            Some("http://127.0.0.1:41234/health")
        );
        // The endpoint's own BACKEND_HEALTH_URL wins.
        let own = with(
            Some("./consume"),
            Some("/health"),
            &[("BACKEND_HEALTH_URL", "http://127.0.0.1:9/ok")],
        );
        own.validate().unwrap();
        assert_eq!(own.consumer_health_url(41_234), None);
        // No path: nothing derived.
        assert_eq!(
            with(Some("./consume"), None, &[]).consumer_health_url(1),
            None
        );

        for (consumer, path) in [
            (Some("./consume"), "health"),
            (Some("./consume"), "/he alth"),
            (Some("./consume"), ""),
            (None, "/health"),
        ] {
            let err = with(consumer, Some(path), &[]).validate().unwrap_err();
            assert_eq!(err.field, "consumer_health_path", "{path:?}: {err}");
            assert!(err.message.contains(&format!("{path:?}")), "{err}");
        }
        // Stored templates without the field still load.
        let old: WorkerTemplate =
            serde_json::from_str(r#"{"consumer_command": "./consume"}"#).unwrap();
        assert_eq!(old.consumer_health_path, None);
    }
}
