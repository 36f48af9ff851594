//! Signing of worker URLs (the `signature` of READY answers, PROTOCOL §6)
//! and the cache of signatures by URL.
//!
//! A signature is RSASSA-PKCS1-v1_5 over SHA-256 of
//! [`nullworker_protocol::signing_message`]`(url)`, which is deterministic,
//! so any correct implementation gives the same bytes. [`UrlSigner`] signs
//! with `ring` (several times faster than the pure-Rust `rsa` crate, which
//! matters when thousands of workers register at once) after checking, on a
//! probe message, that it produces exactly what
//! [`SigningKey::sign`](nullworker_protocol::SigningKey::sign) produces; if
//! `ring` refuses the key or disagrees, it signs with the protocol crate.
//!
//! Signing costs milliseconds: callers run it on a blocking thread, never
//! under a lock (see `Core::signature`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use nullworker_protocol::signing::SigningKey;
use nullworker_protocol::signing_message;
use ring::rand::SystemRandom;
use ring::rsa::KeyPair;
use ring::signature::RSA_PKCS1_SHA256;

/// Signatures kept before the cache is emptied (each is ~350 bytes plus its
/// URL); a URL is only signed again if a worker reuses it after that.
const CACHE_LIMIT: usize = 100_000;

/// Signs worker URLs with the engine's key.
pub struct UrlSigner {
    key: SigningKey,
    fast: Option<KeyPair>,
    rng: SystemRandom,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("key", &self.key)
            .field("fast", &self.fast.is_some())
            .finish()
    }
}

impl UrlSigner {
    /// A signer for `key`, using `ring` when it agrees with the protocol
    /// crate on a probe message.
    pub fn new(key: SigningKey) -> Self {
        let rng = SystemRandom::new();
        let fast = fast_key(&key, &rng);
        if fast.is_none() {
            tracing::warn!("signing URLs with the slower pure-Rust RSA implementation");
        }
        Self { key, fast, rng }
    }

    /// Whether the fast implementation is in use.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The base64 `signature` for `url`. Takes milliseconds: call it on a
    /// blocking thread.
    pub fn sign_url(&self, url: &str) -> String {
        let msg = signing_message(url);
        if let Some(pair) = &self.fast {
            if let Some(sig) = ring_sign(pair, &self.rng, msg.as_bytes()) {
                return STANDARD.encode(sig);
            }
        }
        self.key.sign_url(url)
    }
}

fn ring_sign(pair: &KeyPair, rng: &SystemRandom, msg: &[u8]) -> Option<Vec<u8>> {
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, rng, msg, &mut sig).ok()?;
    Some(sig)
}

/// The `ring` form of `key`, if `ring` accepts it and signs a probe exactly
/// as the protocol crate does.
fn fast_key(key: &SigningKey, rng: &SystemRandom) -> Option<KeyPair> {
    let pem = key.to_pkcs8_pem();
    let b64: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(b64.trim()).ok()?;
    let pair = KeyPair::from_pkcs8(&der).ok()?;
    let probe = signing_message("http://127.0.0.1:1/probe");
    let ours = ring_sign(&pair, rng, probe.as_bytes())?;
    (ours == key.sign(probe.as_bytes())).then_some(pair)
}

/// Signatures by URL, so each URL is signed once.
#[derive(Debug, Default)]
pub struct SignatureCache {
    map: Mutex<HashMap<String, Arc<str>>>,
}

impl SignatureCache {
    /// The cached signature of `url`.
    pub fn get(&self, url: &str) -> Option<Arc<str>> {
        self.lock().get(url).cloned()
    }

    /// Remembers the signature of `url`.
    pub fn insert(&self, url: &str, signature: Arc<str>) {
        let mut map = self.lock();
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        map.insert(url.to_owned(), signature);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<str>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_signatures_are_identical_and_verify() {
        let key = SigningKey::generate_default().unwrap();
        let signer = UrlSigner::new(key.clone());
        assert!(signer.is_fast(), "ring should accept a 2048-bit key");
        let verifying = key.verifying_key();
        for url in [
            "http://127.0.0.1:8080",
            "https://[::1]:443/path?q=é",
            "http://10.0.0.1:1234/\"quoted\"",
        ] {
            let sig = signer.sign_url(url);
            assert_eq!(sig, key.sign_url(url), "{url}");
            verifying.verify_url(url, &sig).unwrap();
        }
    }

    #[test]
    fn cache_remembers() {
        let cache = SignatureCache::default();
        assert!(cache.get("u").is_none());
        cache.insert("u", "s".into());
        assert_eq!(cache.get("u").as_deref(), Some("s"));
    }
}
