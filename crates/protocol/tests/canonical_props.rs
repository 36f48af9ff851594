//! Properties of the canonical text over arbitrary inputs.

use nullworker_protocol::{canonical_json, python_json_eq, signing_message};
use proptest::prelude::*;
use serde_json::{json, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|u| json!(u)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn signing_message_is_ascii_and_parses_back(s in any::<String>()) {
        let msg = signing_message(&s);
        prop_assert!(msg.is_ascii());
        let parsed: Value = serde_json::from_str(&msg).unwrap();
        prop_assert_eq!(parsed, json!({"url": s}));
    }

    #[test]
    fn canonical_json_is_ascii_and_parses_back_equal(v in arb_json()) {
        let text = canonical_json(&v);
        prop_assert!(text.is_ascii());
        let parsed: Value = serde_json::from_str(&text).unwrap();
        prop_assert!(python_json_eq(&parsed, &v), "{} vs {}", parsed, v);
        // Canonical text is a fixed point.
        prop_assert_eq!(canonical_json(&parsed), text);
    }

    #[test]
    fn python_eq_is_reflexive_and_symmetric(a in arb_json(), b in arb_json()) {
        prop_assert!(python_json_eq(&a, &a));
        prop_assert_eq!(python_json_eq(&a, &b), python_json_eq(&b, &a));
    }
}
