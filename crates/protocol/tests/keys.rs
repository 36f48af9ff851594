//! Key generation, PEM round trips and PEM error reporting.

use nullworker_protocol::{KeyError, SignatureError, SigningKey, VerifyingKey};

#[test]
fn generated_key_round_trips_through_pem() {
    let key = SigningKey::generate_default().expect("generate");
    assert_eq!(key.bits(), 2048);
    let private_pem = key.to_pkcs8_pem();
    assert!(
        private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "{private_pem}"
    );
    let public_pem = key.verifying_key().to_spki_pem();
    assert!(
        public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{public_pem}"
    );

    let loaded = SigningKey::from_pem(&private_pem).expect("reload private");
    let public = VerifyingKey::from_pem(&public_pem).expect("reload public");
    let public_pkcs1 =
        VerifyingKey::from_pem(&public.to_pkcs1_pem()).expect("reload PKCS#1 public");
    assert_eq!(public, public_pkcs1);
    assert_eq!(loaded.verifying_key(), public);

    let url = "http://127.0.0.1:40123";
    let sig = loaded.sign_url(url);
    // Deterministic: the original key produces the same signature.
    assert_eq!(key.sign_url(url), sig);
    public.verify_url(url, &sig).expect("verify");
    assert_eq!(
        public.verify_url("http://127.0.0.1:40124", &sig),
        Err(SignatureError::Mismatch)
    );

    let other = SigningKey::generate(1024).expect("generate 1024");
    assert_eq!(
        other.verifying_key().verify_url(url, &sig),
        Err(SignatureError::WrongLength {
            expected: 128,
            actual: 256
        })
    );
}

#[test]
fn too_small_key_is_refused() {
    let err = SigningKey::generate(512).unwrap_err();
    assert!(matches!(err, KeyError::BadSize { bits: 512 }), "{err:?}");
    assert!(err.to_string().contains("512"), "{err}");
}

#[test]
fn bad_pem_errors_name_what_was_expected() {
    let err = SigningKey::from_pem("").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("RSA PRIVATE KEY") && text.contains("PKCS#8") && text.contains("empty"),
        "{text}"
    );

    let public_pem = SigningKey::generate(1024)
        .unwrap()
        .verifying_key()
        .to_spki_pem();
    let err = SigningKey::from_pem(&public_pem).unwrap_err();
    assert!(matches!(err, KeyError::UnsupportedPem { .. }), "{err:?}");
    assert!(err.to_string().contains("found \"PUBLIC KEY\""), "{err}");

    let err = VerifyingKey::from_pem("not a key").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"PUBLIC KEY\"") && text.contains("\"RSA PUBLIC KEY\""),
        "{text}"
    );
    assert!(text.contains("without a PEM header"), "{text}");

    let err =
        VerifyingKey::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
    assert!(err.to_string().contains("found \"CERTIFICATE\""), "{err}");

    let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    let err = VerifyingKey::from_pem(garbage).unwrap_err();
    assert!(matches!(err, KeyError::Invalid { .. }), "{err:?}");
    let garbage = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    let err = SigningKey::from_pem(garbage).unwrap_err();
    assert!(
        matches!(err, KeyError::Invalid { kind, .. } if kind.contains("PKCS#1")),
        "{err:?}"
    );
}

#[test]
fn pem_with_surrounding_whitespace_and_crlf_loads() {
    let key = SigningKey::generate(1024).unwrap();
    let pem = format!(
        "\n\n{}\n",
        key.verifying_key().to_spki_pem().replace('\n', "\r\n")
    );
    let loaded: VerifyingKey = pem.parse().expect("CRLF PEM");
    assert_eq!(loaded, key.verifying_key());
}
