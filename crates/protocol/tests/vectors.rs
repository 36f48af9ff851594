//! Golden vectors produced by the reference implementation (Python 3.11 +
//! pycryptodome): canonical JSON text and auth_data signatures, compared byte
//! for byte.

use nullworker_protocol::{
    canonical_json, signing_message, SignatureError, SigningKey, VerifyingKey,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn load(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn str_field<'a>(case: &'a Value, key: &str) -> &'a str {
    case[key]
        .as_str()
        .unwrap_or_else(|| panic!("case {} has no string `{key}`", case["id"]))
}

fn cases(doc: &Value) -> &Vec<Value> {
    doc["cases"].as_array().expect("`cases` array")
}

struct KeyPair {
    signing_pkcs1: SigningKey,
    signing_pkcs8: SigningKey,
    verifying_spki: VerifyingKey,
    verifying_pkcs1: VerifyingKey,
}

fn key_pair(doc: &Value, label: &str) -> KeyPair {
    let k = &doc["keys"][label];
    KeyPair {
        signing_pkcs1: SigningKey::from_pem(str_field(k, "private_key_pkcs1_pem"))
            .expect("PKCS#1 private"),
        signing_pkcs8: SigningKey::from_pem(str_field(k, "private_key_pkcs8_pem"))
            .expect("PKCS#8 private"),
        verifying_spki: VerifyingKey::from_pem(str_field(k, "public_key_spki_pem"))
            .expect("SPKI public"),
        verifying_pkcs1: VerifyingKey::from_pem(str_field(k, "public_key_pkcs1_pem"))
            .expect("PKCS#1 public"),
    }
}

#[test]
fn canonical_cases_match_byte_for_byte() {
    let doc = load("canonical.json");
    let cases = cases(&doc);
    assert!(cases.len() >= 9, "expected the full canonical vector set");
    for case in cases {
        let id = str_field(case, "id");
        let input: Value = serde_json::from_str(str_field(case, "input_json"))
            .unwrap_or_else(|e| panic!("{id}: input_json: {e}"));
        let output = str_field(case, "output");
        let got = canonical_json(&input);
        assert_eq!(got, output, "{id}: canonical text differs");
        assert_eq!(
            sha256_hex(got.as_bytes()),
            str_field(case, "output_sha256_hex"),
            "{id}: sha256"
        );
        // The already-decoded `input` must render identically too.
        assert_eq!(
            canonical_json(&case["input"]),
            output,
            "{id}: from decoded input"
        );
    }
}

#[test]
fn signing_messages_match() {
    let doc = load("signing.json");
    for case in cases(&doc) {
        let id = str_field(case, "id");
        let url = str_field(case, "url");
        let hex: String = url.bytes().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, str_field(case, "url_utf8_hex"), "{id}: url bytes");
        let message = signing_message(url);
        assert!(message.is_ascii(), "{id}: message must be ASCII");
        assert_eq!(message, str_field(case, "message"), "{id}: message");
        assert_eq!(
            sha256_hex(message.as_bytes()),
            str_field(case, "message_sha256_hex"),
            "{id}: sha256"
        );
    }
}

#[test]
fn valid_cases_sign_exactly_and_verify() {
    let doc = load("signing.json");
    let primary = key_pair(&doc, "primary");
    let mut valid = 0;
    for case in cases(&doc)
        .iter()
        .filter(|c| c["valid"] == Value::Bool(true))
    {
        valid += 1;
        let id = str_field(case, "id");
        assert_eq!(str_field(case, "verify_with"), "primary", "{id}");
        let url = str_field(case, "url");
        let want = str_field(case, "signature_b64");
        assert_eq!(
            primary.signing_pkcs1.sign_url(url),
            want,
            "{id}: PKCS#1 key signature"
        );
        assert_eq!(
            primary.signing_pkcs8.sign_url(url),
            want,
            "{id}: PKCS#8 key signature"
        );
        primary
            .verifying_spki
            .verify_url(url, want)
            .unwrap_or_else(|e| panic!("{id}: SPKI verify: {e}"));
        primary
            .verifying_pkcs1
            .verify_url(url, want)
            .unwrap_or_else(|e| panic!("{id}: PKCS#1 verify: {e}"));
        let auth_data = serde_json::json!({"url": url, "signature": want});
        primary
            .verifying_spki
            .verify_auth_data(&auth_data)
            .unwrap_or_else(|e| panic!("{id}: auth_data: {e}"));
    }
    assert_eq!(valid, 17, "expected 17 valid cases");
}

#[test]
fn invalid_cases_are_rejected() {
    let doc = load("signing.json");
    let primary = key_pair(&doc, "primary");
    let other = key_pair(&doc, "other");
    let mut invalid = 0;
    for case in cases(&doc)
        .iter()
        .filter(|c| c["valid"] == Value::Bool(false))
    {
        invalid += 1;
        let id = str_field(case, "id");
        let url = str_field(case, "url");
        let sig = str_field(case, "signature_b64");
        for key in [&primary.verifying_spki, &primary.verifying_pkcs1] {
            let err = key.verify_url(url, sig).expect_err(id);
            assert_eq!(
                err,
                SignatureError::Mismatch,
                "{id}: well-formed but wrong signature"
            );
        }
        // What each negative case actually signed is reproducible.
        if let Some(signed_url) = case.get("signed_url").and_then(Value::as_str) {
            assert_eq!(
                primary.signing_pkcs1.sign_url(signed_url),
                sig,
                "{id}: signed_url"
            );
        }
        if let Some(signed_text) = case.get("signed_text").and_then(Value::as_str) {
            primary
                .verifying_spki
                .verify(signed_text.as_bytes(), &b64(sig))
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        if case.get("signed_with").and_then(Value::as_str) == Some("other") {
            assert_eq!(
                other.signing_pkcs8.sign_url(url),
                sig,
                "{id}: other key signature"
            );
            other
                .verifying_spki
                .verify_url(url, sig)
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }
    assert_eq!(invalid, 5, "expected 5 invalid cases");
}

#[test]
fn malformed_signatures_get_distinct_errors() {
    let doc = load("signing.json");
    let primary = key_pair(&doc, "primary");
    let case = &cases(&doc)[0];
    let url = str_field(case, "url");
    let sig = str_field(case, "signature_b64");
    let key = &primary.verifying_spki;

    assert!(matches!(
        key.verify_url(url, "not base64!"),
        Err(SignatureError::Base64(_))
    ));
    // Missing padding and embedded whitespace are not strict standard base64.
    assert!(matches!(
        key.verify_url(url, sig.trim_end_matches('=')),
        Err(SignatureError::Base64(_))
    ));
    let with_newline = format!("{}\n{}", &sig[..64], &sig[64..]);
    assert!(matches!(
        key.verify_url(url, &with_newline),
        Err(SignatureError::Base64(_))
    ));
    // URL-safe alphabet is rejected.
    let url_safe = sig.replace('+', "-").replace('/', "_");
    if url_safe != sig {
        assert!(matches!(
            key.verify_url(url, &url_safe),
            Err(SignatureError::Base64(_))
        ));
    }
    assert_eq!(
        key.verify_url(url, "c2ln"),
        Err(SignatureError::WrongLength {
            expected: 256,
            actual: 3
        })
    );
    assert!(matches!(
        key.verify_url(url, ""),
        Err(SignatureError::WrongLength { actual: 0, .. })
    ));
    assert_eq!(
        key.verify_auth_data(&serde_json::json!({"url": url, "signature": 5})),
        Err(SignatureError::MissingField("signature"))
    );
    assert_eq!(
        key.verify_auth_data(&serde_json::json!({"signature": sig})),
        Err(SignatureError::MissingField("url"))
    );
}

#[test]
fn public_key_pem_round_trips() {
    let doc = load("signing.json");
    let primary = key_pair(&doc, "primary");
    let spki = primary.verifying_spki.to_spki_pem();
    assert_eq!(
        spki.trim(),
        str_field(&doc["keys"]["primary"], "public_key_spki_pem").trim()
    );
    assert_eq!(
        VerifyingKey::from_pem(&spki).unwrap(),
        primary.verifying_pkcs1
    );
    assert_eq!(
        primary.signing_pkcs1.verifying_key(),
        primary.verifying_spki
    );
    let pkcs8 = primary.signing_pkcs1.to_pkcs8_pem();
    assert_eq!(
        pkcs8.trim(),
        str_field(&doc["keys"]["primary"], "private_key_pkcs8_pem").trim()
    );
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("vector base64")
}
