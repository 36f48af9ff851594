//! Canonical JSON text and Python-style JSON equality.
//!
//! Owns the byte-exact rendering of a JSON value as Python's
//! `json.dumps(value, indent=4, sort_keys=True)` (PROTOCOL.md §6.2), the
//! signed message built from a worker URL, and the deep equality the
//! reference worker uses to compare `session_auth` (quirk Q21). It does not
//! sign anything; see [`crate::signing`].

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// Renders `value` exactly as Python's `json.dumps(value, indent=4, sort_keys=True)`.
///
/// Rules (PROTOCOL.md §6.2, `vectors/canonical.json`):
/// * `ensure_ascii`: every code point above U+007E, and DEL, is written as a
///   lowercase `\uXXXX` escape (UTF-16 surrogate pairs above U+FFFF);
/// * C0 controls use `\b \t \n \f \r` or `\u00XX`; `"` and `\` are escaped; `/` is not;
/// * a newline plus four spaces per level before each member, `,` between
///   items, `: ` between key and value, empty containers as `{}` / `[]`;
/// * object keys sorted by Unicode code point;
/// * integers verbatim (including values beyond `i64`), floats in Python
///   `repr` form (`100.0`, `0.1`, `1e-07`, `1e+20`);
/// * no trailing newline.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0);
    out
}

/// The signed message for a worker URL: `canonical_json({"url": url})`.
///
/// For a single key this is `{\n    "url": "<escaped url>"\n}`.
pub fn signing_message(url: &str) -> String {
    let mut out = String::with_capacity(url.len() + 16);
    out.push_str("{\n    \"url\": ");
    write_string(&mut out, url);
    out.push_str("\n}");
    out
}

fn write_indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("    ");
    }
}

fn write_value(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_indent(out, level + 1);
                write_value(out, item, level + 1);
            }
            write_indent(out, level);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            // UTF-8 byte order equals code point order.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_indent(out, level + 1);
                write_string(out, key);
                out.push_str(": ");
                write_value(out, item, level + 1);
            }
            write_indent(out, level);
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(f) = n.as_f64() {
        out.push_str(&python_float_repr(f));
    } else {
        // Only reachable with serde_json's `arbitrary_precision`: the number's own text.
        out.push_str(&n.to_string());
    }
}

/// Formats a float like Python's `repr(float)` (and `json.dumps`).
///
/// Shortest round-trip digits; fixed notation when the decimal exponent is
/// in `-4..16`, otherwise `d[.ddd]e±XX` with at least two exponent digits.
/// Non-finite values use Python's `json` spellings (`NaN`, `Infinity`,
/// `-Infinity`), which `serde_json` values can never hold.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // Rust's `{:e}` yields the shortest round-trip digits, e.g. "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if f == 0.0 {
        out.push_str("0.0");
        return out;
    }
    // Python's `decpt`: value = 0.DIGITS × 10^decpt.
    let decpt = exp + 1;
    if (-4 < decpt) && (decpt <= 16) {
        if decpt <= 0 {
            out.push_str("0.");
            for _ in 0..(-decpt) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let decpt = decpt as usize;
            if digits.len() <= decpt {
                out.push_str(&digits);
                for _ in digits.len()..decpt {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..decpt]);
                out.push('.');
                out.push_str(&digits[decpt..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let abs = exp.unsigned_abs();
        if abs < 10 {
            out.push('0');
        }
        out.push_str(&abs.to_string());
    }
    out
}

/// Writes `s` as a JSON string literal with Python's `ensure_ascii=True` escaping.
fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let push_u = |out: &mut String, unit: u16| {
        out.push_str("\\u");
        for shift in [12, 8, 4, 0] {
            out.push(HEX[usize::from((unit >> shift) & 0xf)] as char);
        }
    };
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_u(out, *unit);
                }
            }
        }
    }
    out.push('"');
}

/// Deep equality of two JSON values as Python compares the decoded objects.
///
/// * Objects: same key set, equal values; key order is irrelevant.
/// * Arrays: same length, pairwise equal.
/// * Numbers compare by exact numeric value: `100 == 100.0`, but
///   `9007199254740993 != 9007199254740992.0` (Python compares int and float exactly).
/// * Booleans are numbers in Python (`True == 1`, `False == 0.0`), and this
///   function mirrors that: `true` equals `1` and `1.0`. The reference
///   worker's `session_auth` check (quirk Q21) behaves the same way.
/// * `null` equals only `null`; strings compare by content.
pub fn python_json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| python_json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| python_json_eq(v, w)))
        }
        (Value::Bool(_) | Value::Number(_), Value::Bool(_) | Value::Number(_)) => {
            match (PyNum::of(a), PyNum::of(b)) {
                (Some(x), Some(y)) => x.cmp_eq(&y),
                _ => false,
            }
        }
        _ => false,
    }
}

/// A JSON number or boolean seen as a Python `int` or `float`.
enum PyNum {
    Int(i128),
    Float(f64),
}

impl PyNum {
    fn of(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(Self::Int(i128::from(*b))),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Some(Self::Int(i128::from(i)))
                } else if let Some(u) = n.as_u64() {
                    Some(Self::Int(i128::from(u)))
                } else {
                    n.as_f64().map(Self::Float)
                }
            }
            _ => None,
        }
    }

    fn cmp_eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Int(x), Self::Int(y)) => x == y,
            (Self::Float(x), Self::Float(y)) => x == y,
            (Self::Int(i), Self::Float(f)) | (Self::Float(f), Self::Int(i)) => int_eq_float(*i, *f),
        }
    }
}

/// Exact comparison of an integer with a float, as Python does it.
fn int_eq_float(i: i128, f: f64) -> bool {
    if !f.is_finite() || f.fract() != 0.0 {
        return false;
    }
    // Every integral f64 with |f| < 2^127 converts to i128 exactly.
    const LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0; // 2^127
    if f.abs() >= LIMIT {
        return false;
    }
    (f as i128).cmp(&i) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (100.0, "100.0"),
            (0.1, "0.1"),
            (1e-7, "1e-07"),
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1234567890123456.7, "1234567890123456.8"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.0 / 3.0, "0.3333333333333333"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (123.456, "123.456"),
            (1760000000.1, "1760000000.1"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float_repr(f), want, "repr of {f:?}");
        }
    }

    #[test]
    fn python_eq_numbers_and_bools() {
        assert!(python_json_eq(&json!(100), &json!(100.0)));
        assert!(python_json_eq(&json!(true), &json!(1)));
        assert!(python_json_eq(&json!(false), &json!(0.0)));
        assert!(!python_json_eq(&json!(true), &json!(2)));
        assert!(!python_json_eq(&json!(100), &json!(100.5)));
        assert!(!python_json_eq(&json!(null), &json!(0)));
        assert!(!python_json_eq(&json!("1"), &json!(1)));
        assert!(python_json_eq(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!python_json_eq(
            &json!(9_007_199_254_740_993_u64),
            &json!(9_007_199_254_740_992.0)
        ));
        assert!(python_json_eq(
            &json!(9_007_199_254_740_992_u64),
            &json!(9_007_199_254_740_992.0)
        ));
        assert!(python_json_eq(&json!(-3), &json!(-3.0)));
    }

    #[test]
    fn python_eq_containers() {
        let a: Value =
            serde_json::from_str(r#"{"cost": 100, "url": "u", "x": [1, {"k": 2.0}]}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"x": [1.0, {"k": 2}], "url": "u", "cost": 100.0}"#).unwrap();
        assert!(python_json_eq(&a, &b));
        let c: Value = serde_json::from_str(r#"{"x": [1.0, {"k": 2}], "url": "u"}"#).unwrap();
        assert!(!python_json_eq(&a, &c));
        assert!(!python_json_eq(&c, &a));
        let d: Value =
            serde_json::from_str(r#"{"x": [1.0, {"k": 2}], "url": "u", "other": 100}"#).unwrap();
        assert!(!python_json_eq(&a, &d));
        assert!(!python_json_eq(&json!([1, 2]), &json!([2, 1])));
        assert!(!python_json_eq(&json!([1]), &json!([1, 1])));
        assert!(!python_json_eq(&json!({}), &json!([])));
    }

    #[test]
    fn signing_message_shape() {
        assert_eq!(
            signing_message("http://a:1"),
            "{\n    \"url\": \"http://a:1\"\n}"
        );
        assert_eq!(signing_message(""), canonical_json(&json!({"url": ""})));
        assert_eq!(
            signing_message("é😀\u{7f}"),
            "{\n    \"url\": \"\\u00e9\\ud83d\\ude00\\u007f\"\n}"
        );
    }
}
