//! Worker reports (`POST /worker_status/`) as the engine takes them: parsed
//! leniently, with every number made finite and bounded before the
//! registry does arithmetic on it.
//!
//! A worker whose load totals overflowed used to send `"cur_load": null`
//! (serde's rendering of infinity) or, from a Python worker, the non-JSON
//! token `Infinity`; answering such a report with 400 wedged the worker
//! (its unsent totals are never cleared, so every later report carried the
//! same value) and, 30 s later, the engine declared it stale and destroyed
//! it with its sessions. So the engine accepts such reports and bounds the
//! numbers instead ([`parse`] then [`bound_numbers`]):
//!
//! * a `null` field is taken as absent (its default, 0);
//! * the tokens `NaN`, `Infinity`, `-Infinity` and number literals beyond
//!   the range of an `f64` (e.g. `1e400`) are read as NaN or as the largest
//!   number of that sign (only when the body does not parse as JSON);
//! * then NaN becomes 0 and every number is clamped to its field's bounds:
//!   loads and throughputs (`cur_load`, `new_load`, `rej_load`, `cur_perf`,
//!   `max_perf`, capacities, disk figures) to 0 … [`MAX_REPORTED_LOAD`]
//!   (`additional_disk_usage` may be negative), `loadtime` to
//!   0 … [`MAX_DURATION`].
//!
//! Pure functions; the registry logs the first repaired report of each
//! worker.

use nullworker_protocol::messages::WorkerStatus;
use serde_json::{Map, Value};

use crate::policy::MAX_DURATION;

/// Largest load, throughput or disk figure the engine takes from a report
/// (10¹⁵, below 2⁵³ so sums of integral costs stay exact; workers saturate
/// their own totals at the same bound). Larger values are clamped to it.
pub const MAX_REPORTED_LOAD: f64 = 1e15;

/// The `f64` fields of a report, with their bounds.
const NUMBER_FIELDS: &[(&str, f64, f64)] = &[
    ("loadtime", 0.0, MAX_DURATION),
    ("cur_load", 0.0, MAX_REPORTED_LOAD),
    ("rej_load", 0.0, MAX_REPORTED_LOAD),
    ("new_load", 0.0, MAX_REPORTED_LOAD),
    ("max_perf", 0.0, MAX_REPORTED_LOAD),
    ("cur_perf", 0.0, MAX_REPORTED_LOAD),
    ("cur_capacity", 0.0, MAX_REPORTED_LOAD),
    ("max_capacity", 0.0, MAX_REPORTED_LOAD),
    (
        "additional_disk_usage",
        -MAX_REPORTED_LOAD,
        MAX_REPORTED_LOAD,
    ),
    ("disk_usage", 0.0, MAX_REPORTED_LOAD),
];

/// The report's field `name` among [`NUMBER_FIELDS`].
fn number_mut<'a>(report: &'a mut WorkerStatus, name: &str) -> Option<&'a mut f64> {
    Some(match name {
        "loadtime" => &mut report.loadtime,
        "cur_load" => &mut report.cur_load,
        "rej_load" => &mut report.rej_load,
        "new_load" => &mut report.new_load,
        "max_perf" => &mut report.max_perf,
        "cur_perf" => &mut report.cur_perf,
        "cur_capacity" => &mut report.cur_capacity,
        "max_capacity" => &mut report.max_capacity,
        "additional_disk_usage" => &mut report.additional_disk_usage,
        "disk_usage" => report.disk_usage.as_mut()?,
        _ => return None,
    })
}

/// Parses a report body. `null` number fields come back as NaN (for
/// [`bound_numbers`] to repair and count), other `null` fields as their
/// defaults. The error names what is wrong.
pub fn parse(body: &[u8]) -> Result<WorkerStatus, String> {
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(value) => value,
        Err(err) => repair_number_tokens(body)
            .and_then(|fixed| serde_json::from_slice::<Value>(&fixed).ok())
            .ok_or_else(|| format!("invalid worker report: {err}"))?,
    };
    let Value::Object(mut obj) = value else {
        return Err("invalid worker report: expected a JSON object".into());
    };
    let nulls = take_nulls(&mut obj);
    let mut report: WorkerStatus = serde_json::from_value(Value::Object(obj))
        .map_err(|err| format!("invalid worker report: {err}"))?;
    for name in nulls {
        if name == "disk_usage" {
            report.disk_usage = Some(f64::NAN);
        }
        if let Some(slot) = number_mut(&mut report, name) {
            *slot = f64::NAN;
        }
    }
    Ok(report)
}

/// Removes every `null` field but `id` (which must be given), returning the
/// number fields among them.
fn take_nulls(obj: &mut Map<String, Value>) -> Vec<&'static str> {
    let mut nulls = Vec::new();
    obj.retain(|key, value| {
        if !value.is_null() || key == "id" {
            return true;
        }
        if let Some((name, _, _)) = NUMBER_FIELDS.iter().find(|(name, _, _)| name == key) {
            nulls.push(*name);
        }
        false
    });
    nulls
}

/// Makes every number of `report` finite and within its field's bounds
/// (NaN ⇒ 0; see the module docs). Returns the fields it changed.
pub fn bound_numbers(report: &mut WorkerStatus) -> Vec<&'static str> {
    let mut changed = Vec::new();
    for &(name, lo, hi) in NUMBER_FIELDS {
        let Some(slot) = number_mut(report, name) else {
            continue;
        };
        let v = *slot;
        let bounded = if v.is_nan() { 0.0 } else { v.clamp(lo, hi) };
        if bounded != v || v.is_nan() {
            *slot = bounded;
            changed.push(name);
        }
    }
    changed
}

/// A copy of `body` where the number tokens JSON lacks (`NaN`, `Infinity`,
/// `-Infinity`, as Python's `json.dumps` writes them) and number literals
/// beyond the `f64` range are replaced by `null` (NaN) or `±1e308`, outside
/// strings. `None` if nothing was replaced (or the body is not UTF-8).
fn repair_number_tokens(body: &[u8]) -> Option<Vec<u8>> {
    std::str::from_utf8(body).ok()?;
    let mut out = Vec::with_capacity(body.len());
    let mut changed = false;
    let mut in_string = false;
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if in_string {
            out.push(c);
            if c == b'\\' && i + 1 < body.len() {
                out.push(body[i + 1]);
                i += 1;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        let rest = &body[i..];
        let replacement: Option<(&[u8], usize)> = if c == b'"' {
            in_string = true;
            None
        } else if rest.starts_with(b"NaN") {
            Some((b"null", 3))
        } else if rest.starts_with(b"Infinity") {
            Some((b"1e308", 8))
        } else if rest.starts_with(b"-Infinity") {
            Some((b"-1e308", 9))
        } else if c == b'-' || c.is_ascii_digit() {
            let len = rest
                .iter()
                .take_while(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
                .count();
            let token = std::str::from_utf8(&rest[..len]).unwrap_or_default();
            match token.parse::<f64>() {
                Ok(v) if v.is_infinite() && v > 0.0 => Some((b"1e308", len)),
                Ok(v) if v.is_infinite() => Some((b"-1e308", len)),
                _ => {
                    out.extend_from_slice(&rest[..len]);
                    i += len;
                    continue;
                }
            }
        } else {
            None
        };
        match replacement {
            Some((with, len)) => {
                out.extend_from_slice(with);
                changed = true;
                i += len;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(body: &str) -> WorkerStatus {
        parse(body.as_bytes()).unwrap_or_else(|err| panic!("{body}: {err}"))
    }

    #[test]
    fn null_and_out_of_range_numbers_are_accepted_and_bounded() {
        for (body, field, want) in [
            (r#"{"id": 1, "cur_load": null}"#, "cur_load", 0.0),
            (
                r#"{"id": 1, "rej_load": 1e400}"#,
                "rej_load",
                MAX_REPORTED_LOAD,
            ),
            (
                r#"{"id": 1, "new_load": 1e308}"#,
                "new_load",
                MAX_REPORTED_LOAD,
            ),
            (
                r#"{"id": 1, "cur_perf": Infinity}"#,
                "cur_perf",
                MAX_REPORTED_LOAD,
            ),
            (r#"{"id": 1, "max_perf": -Infinity}"#, "max_perf", 0.0),
            (r#"{"id": 1, "cur_load": NaN}"#, "cur_load", 0.0),
            (r#"{"id": 1, "cur_load": -5}"#, "cur_load", 0.0),
            (r#"{"id": 1, "loadtime": 1e300}"#, "loadtime", MAX_DURATION),
            (r#"{"id": 1, "disk_usage": null}"#, "disk_usage", 0.0),
            (
                r#"{"id": 1, "additional_disk_usage": -1e400}"#,
                "additional_disk_usage",
                -MAX_REPORTED_LOAD,
            ),
        ] {
            let mut report = parsed(body);
            assert_eq!(bound_numbers(&mut report), vec![field], "{body}");
            let got = if field == "disk_usage" {
                report.disk_usage.unwrap()
            } else {
                *number_mut(&mut report, field).unwrap()
            };
            assert_eq!(got, want, "{body}");
            // Bounded once, nothing is left to repair.
            assert!(bound_numbers(&mut report).is_empty(), "{body}");
        }
    }

    #[test]
    fn sound_reports_are_untouched() {
        let body = r#"{"id": 7, "mtoken": "NaN Infinity -1e400", "version": "1.1.0",
            "loadtime": 1.5, "cur_load": 100, "max_perf": 100.0, "disk_usage": 3.5,
            "additional_disk_usage": -0.25, "working_request_idxs": [1, 2],
            "url": "http://127.0.0.1:1", "num_requests_working": null}"#;
        let mut report = parsed(body);
        assert!(bound_numbers(&mut report).is_empty());
        assert_eq!(report.mtoken, "NaN Infinity -1e400");
        assert_eq!(report.cur_load, 100.0);
        assert_eq!(report.working_request_idxs, vec![1, 2]);
        assert_eq!(report.num_requests_working, 0);
        // Tokens inside strings (escaped quotes included) are left alone.
        let report = parsed(r#"{"id": 1, "error_msg": "a \"NaN\" 1e400", "cur_load": Infinity}"#);
        assert_eq!(report.error_msg, "a \"NaN\" 1e400");
        assert!(report.cur_load > 1e300);
    }

    #[test]
    fn malformed_reports_are_still_refused_naming_the_problem() {
        for (body, needle) in [
            ("{", "invalid worker report"),
            ("[1]", "expected a JSON object"),
            (r#"{"id": null}"#, "id"),
            (r#"{"cur_load": 1}"#, "missing field `id`"),
            (r#"{"id": 1, "cur_load": "x"}"#, "invalid type"),
            (r#"{"id": 1, "cur_load": Nope}"#, "invalid worker report"),
        ] {
            let err = parse(body.as_bytes()).expect_err(body);
            assert!(err.contains(needle), "{body}: {err}");
        }
    }
}
