//! What `nullworker endpoint` prints, as pure functions of what the APIs
//! answered: the endpoint and worker tables, their `--json` rows, a
//! worker's displayed state (a worker holding a session is `HELD`, not
//! `IDLE`), and the effective configuration with where each value came from.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use nullworker_client::{EndedWorker, WorkerDetail};
use nullworker_protocol::{EndpointParams, EndpointRecord, EndpointWorker};
use serde::Serialize;
use serde_json::Value;

/// The state shown for a worker. The APIs say `IDLE` (Vast's "Ready") for a
/// loaded worker whether or not it holds a session; a ready worker with
/// work in flight is shown `HELD (n sessions)` (a null worker's work in
/// flight is its sessions), or `BUSY` while a routed request has not yet
/// shown up in its reports.
pub fn display_state(w: &EndpointWorker) -> String {
    if w.status != "IDLE" {
        return w.status.clone();
    }
    match w.reqs_working {
        0 if w.cur_load > 0.0 => "BUSY".to_owned(),
        0 => "IDLE".to_owned(),
        1 => "HELD (1 session)".to_owned(),
        n => format!("HELD ({n} sessions)"),
    }
}

/// One row of `endpoint workers --json` (documented in docs/cli.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRow {
    /// The §3.5 fields as the route service gave them (`status` unchanged).
    #[serde(flatten)]
    pub worker: EndpointWorker,
    /// [`display_state`].
    pub state: String,
    /// Sessions (work items) in flight (`reqs_working`).
    pub sessions: u64,
    /// Whether it holds a session or a routed request.
    pub busy: bool,
    /// The worker's control port (local engine), else `null`.
    pub control_port: Option<u16>,
    /// Why it is in ERROR (local engine), else `null`.
    pub error: Option<String>,
    /// `false`: a live worker.
    pub gone: bool,
}

impl WorkerRow {
    /// A live worker, with what a local engine adds about it, if anything.
    pub fn live(worker: EndpointWorker, detail: Option<&WorkerDetail>) -> Self {
        Self {
            state: display_state(&worker),
            sessions: worker.reqs_working,
            busy: worker.reqs_working > 0 || worker.cur_load > 0.0,
            control_port: detail.and_then(|d| d.control_port),
            error: detail.and_then(|d| d.error.clone()),
            gone: false,
            worker,
        }
    }

    /// A worker that has ended (`--all`).
    pub fn ended(h: &EndedWorker) -> Self {
        let worker = EndpointWorker {
            id: h.id,
            status: "GONE".to_owned(),
            cur_load: 0.0,
            new_load: 0.0,
            cur_load_rolling_avg: 0.0,
            cur_perf: 0.0,
            perf: 0.0,
            measured_perf: 0.0,
            dlperf: 0.0,
            reliability: 0.0,
            reqs_working: 0,
            disk_usage: 0.0,
            loaded_at: 0.0,
            started_at: 0.0,
            url: h.url.clone().unwrap_or_default(),
            created_at: h.created_at,
        };
        Self {
            state: "GONE".to_owned(),
            sessions: 0,
            busy: false,
            control_port: None,
            error: h.reason.clone(),
            gone: true,
            worker,
        }
    }
}

/// The worker table: ID STATE LOAD URL CONTROL AGE ERROR.
pub fn workers_table(rows: &[WorkerRow], now: f64) -> String {
    let mut out = format!(
        "{:<8} {:<20} {:>8} {:<28} {:>7} {:>8}  ERROR\n",
        "ID", "STATE", "LOAD", "URL", "CONTROL", "AGE"
    );
    for r in rows {
        let load = if r.gone {
            "-".to_owned()
        } else {
            format!("{}", r.worker.cur_load)
        };
        let control = r
            .control_port
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        let age = (now - r.worker.created_at).max(0.0);
        let _ = writeln!(
            out,
            "{:<8} {:<20} {:>8} {:<28} {:>7} {:>7.0}s  {}",
            r.worker.id,
            r.state,
            load,
            r.worker.url,
            control,
            age,
            r.error.as_deref().unwrap_or(""),
        );
    }
    out
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// The endpoint table: ID NAME STATE MAX COLD UTIL MAXQ INACT.
pub fn endpoints_table(records: &[EndpointRecord]) -> String {
    let mut out = format!(
        "{:<6} {:<24} {:<10} {:>6} {:>6} {:>7} {:>8} {:>8}\n",
        "ID", "NAME", "STATE", "MAX", "COLD", "UTIL", "MAXQ", "INACT"
    );
    for e in records {
        let _ = writeln!(
            out,
            "{:<6} {:<24} {:<10} {:>6} {:>6} {:>7} {:>8} {:>8}",
            e.id,
            e.endpoint_name,
            opt(&e.endpoint_state),
            opt(&e.max_workers),
            opt(&e.cold_workers),
            opt(&e.target_util),
            opt(&e.max_queue_time),
            opt(&e.inactivity_timeout),
        );
    }
    out
}

/// Where a value of the effective configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Given on this command line.
    Given,
    /// From the named preset.
    Preset(String),
    /// Not given: the default.
    Default,
    /// Not given now; it differs from the default, so it was set before.
    Kept,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Given => f.write_str("given"),
            Self::Preset(name) => write!(f, "preset {name}"),
            Self::Default => f.write_str("default"),
            Self::Kept => f.write_str("set"),
        }
    }
}

/// One parameter of the effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigLine {
    /// Wire name.
    pub name: String,
    /// Value as the API answered it (`unset` for null).
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// The §11.1 parameters shown, in this order.
pub const PARAMS: [&str; 10] = [
    "max_workers",
    "cold_workers",
    "min_load",
    "min_cold_load",
    "target_util",
    "cold_mult",
    "max_queue_time",
    "target_queue_time",
    "inactivity_timeout",
    "endpoint_state",
];

/// The non-null values of `v` by wire name.
pub fn param_values<T: Serialize>(v: &T) -> BTreeMap<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(map)) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => BTreeMap::new(),
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// The engine's defaults of every parameter (the one definition, in
/// `nullworker_engine::endpoint`).
pub fn engine_defaults() -> EndpointParams {
    let settings = nullworker_engine::endpoint::EndpointSettings::default();
    EndpointParams {
        endpoint_state: Some(settings.endpoint_state),
        ..settings.params()
    }
}

/// Every parameter of `record` with its value and source: `given` (sent in
/// this call), `preset` (a preset value other than the default), `default`
/// (not given and equal to `defaults`), else `set` (set earlier, kept).
pub fn effective_config(
    record: &EndpointRecord,
    given: &EndpointParams,
    preset: Option<(&str, &EndpointParams)>,
    defaults: &EndpointParams,
) -> Vec<ConfigLine> {
    let values = param_values(record);
    let given = param_values(given);
    let preset_values = preset.map(|(name, p)| (name, param_values(p)));
    let defaults = param_values(defaults);
    PARAMS
        .iter()
        .map(|&name| {
            let value = values.get(name).cloned().unwrap_or(Value::Null);
            let source = if given.contains_key(name) {
                Source::Given
            } else if let Some((preset, _)) = preset_values.as_ref().filter(|(_, p)| {
                // A preset value equal to the default is the default.
                p.get(name)
                    .is_some_and(|v| defaults.get(name).is_none_or(|d| !same(d, v)))
            }) {
                Source::Preset((*preset).to_owned())
            } else if defaults
                .get(name)
                .map_or(value.is_null(), |d| same(d, &value))
            {
                Source::Default
            } else {
                Source::Kept
            };
            let value = match &value {
                Value::Null => "unset".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            ConfigLine {
                name: name.to_owned(),
                value,
                source,
            }
        })
        .collect()
}

/// The configuration as aligned lines, `  name  value  (source)`.
pub fn config_text(lines: &[ConfigLine]) -> String {
    let mut out = String::new();
    for l in lines {
        let _ = writeln!(out, "  {:<19} {:<10} ({})", l.name, l.value, l.source);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(status: &str, reqs: u64, load: f64) -> EndpointWorker {
        serde_json::from_value(serde_json::json!({
            "id": 7, "status": status, "reqs_working": reqs, "cur_load": load,
            "url": "http://127.0.0.1:4000", "created_at": 100.0
        }))
        .unwrap()
    }

    #[test]
    fn a_worker_holding_a_session_is_shown_held() {
        for (status, reqs, load, want) in [
            ("IDLE", 0, 0.0, "IDLE"),
            ("IDLE", 1, 100.0, "HELD (1 session)"),
            ("IDLE", 3, 300.0, "HELD (3 sessions)"),
            ("IDLE", 0, 100.0, "BUSY"),
            ("LOADING", 0, 0.0, "LOADING"),
            ("STOPPED", 0, 0.0, "STOPPED"),
            ("ERROR", 1, 100.0, "ERROR"),
        ] {
            assert_eq!(display_state(&worker(status, reqs, load)), want);
        }
        let row = WorkerRow::live(worker("IDLE", 1, 100.0), None);
        assert!(row.busy);
        let table = workers_table(std::slice::from_ref(&row), 130.0);
        let line = table.lines().nth(1).unwrap();
        assert!(
            line.contains("HELD (1 session)") && line.contains(" 30s"),
            "{table}"
        );
        assert!(!line.contains("IDLE"), "{table}");
        // The JSON row keeps the API's fields and adds the derived ones.
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["status"], "IDLE");
        assert_eq!(json["state"], "HELD (1 session)");
        assert_eq!(json["sessions"], 1);
        assert_eq!(json["busy"], true);
        assert_eq!(json["control_port"], Value::Null);
    }

    fn record(extra: Value) -> EndpointRecord {
        let mut v = serde_json::json!({"id": 1, "endpoint_name": "e", "api_key": "k",
            "user_id": 1, "created_at": 0.0, "max_workers": 20, "cold_workers": 5,
            "min_load": 0.0, "min_cold_load": 0.0, "target_util": 0.9, "cold_mult": 2.5,
            "max_queue_time": 30.0, "target_queue_time": 10.0, "inactivity_timeout": null,
            "endpoint_state": "active"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn defaults() -> EndpointParams {
        engine_defaults()
    }

    #[test]
    fn effective_configuration_says_where_each_value_came_from() {
        // Create without a preset: everything default but what was given.
        let given = EndpointParams {
            max_workers: Some(3),
            ..EndpointParams::default()
        };
        let lines = effective_config(
            &record(serde_json::json!({"max_workers": 3})),
            &given,
            None,
            &defaults(),
        );
        assert_eq!(lines.len(), PARAMS.len());
        let find =
            |lines: &[ConfigLine], n: &str| lines.iter().find(|l| l.name == n).unwrap().clone();
        assert_eq!(find(&lines, "max_workers").source, Source::Given);
        let cold = find(&lines, "cold_workers");
        assert_eq!((cold.value.as_str(), cold.source), ("5", Source::Default));
        assert_eq!(find(&lines, "inactivity_timeout").value, "unset");
        assert_eq!(find(&lines, "inactivity_timeout").source, Source::Default);
        assert_eq!(find(&lines, "endpoint_state").value, "active");
        let text = config_text(&lines);
        assert!(
            text.contains("cold_workers        5          (default)"),
            "{text}"
        );

        // With the seed preset.
        let seed = nullworker_engine::endpoint::preset("seed").unwrap();
        let rec = record(serde_json::json!({"cold_workers": 0, "target_util": 1.0,
            "max_queue_time": 1.0, "target_queue_time": 0.5, "inactivity_timeout": 10.0}));
        let lines = effective_config(&rec, &given, Some(("seed", &seed)), &defaults());
        assert_eq!(
            find(&lines, "cold_workers").source,
            Source::Preset("seed".into())
        );
        assert_eq!(find(&lines, "max_workers").source, Source::Given);
        // The preset's values that are the defaults are shown as defaults.
        assert_eq!(find(&lines, "cold_mult").source, Source::Default);

        // An update: earlier values that differ from the defaults are kept.
        let given = EndpointParams {
            min_load: Some(100.0),
            ..EndpointParams::default()
        };
        let rec = record(serde_json::json!({"min_load": 100.0, "cold_workers": 0}));
        let lines = effective_config(&rec, &given, None, &defaults());
        assert_eq!(find(&lines, "min_load").source, Source::Given);
        assert_eq!(find(&lines, "cold_workers").source, Source::Kept);
        assert_eq!(find(&lines, "max_workers").source, Source::Default);
    }

    #[test]
    fn endpoint_table_shows_unset_values_as_dashes() {
        let table = endpoints_table(&[record(serde_json::json!({}))]);
        let line = table.lines().nth(1).unwrap();
        assert!(line.starts_with("1      e "), "{table}");
        assert!(line.ends_with(" -"), "{table}");
    }
}
