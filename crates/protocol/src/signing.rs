//! RSA signing and verification of `auth_data` (PROTOCOL.md §6.3).
//!
//! Owns the engine's private key ([`SigningKey`]) and the worker's public key
//! ([`VerifyingKey`]): PEM import/export, RSASSA-PKCS1-v1_5 with SHA-256 over
//! the canonical message of a URL, and the standard-base64 wire form. The
//! message text itself comes from [`crate::canonical::signing_message`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical::signing_message;

/// Default RSA modulus size for generated engine keys.
pub const DEFAULT_KEY_BITS: usize = 2048;

/// Smallest modulus accepted by [`SigningKey::generate`].
pub const MIN_KEY_BITS: usize = 1024;

/// Failure to generate, load or encode an RSA key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text holds no PEM block of a kind this key type accepts.
    #[error("unsupported key format: expected a PEM block of kind {expected}, found {found}")]
    UnsupportedPem {
        /// The PEM kinds accepted, e.g. `"RSA PRIVATE KEY" (PKCS#1) or "PRIVATE KEY" (PKCS#8)`.
        expected: &'static str,
        /// What was found instead (the first `-----BEGIN ...-----` label, or a description).
        found: String,
    },
    /// The PEM block has the right label but its contents do not decode.
    #[error("invalid {kind} key: {reason}")]
    Invalid {
        /// The PEM kind that failed to decode.
        kind: &'static str,
        /// The decoder's explanation.
        reason: String,
    },
    /// The requested modulus size is unusable.
    #[error("invalid RSA key size {bits} bits: expected at least {min} bits", min = MIN_KEY_BITS)]
    BadSize {
        /// The size that was asked for.
        bits: usize,
    },
    /// Key generation or encoding failed inside the RSA library.
    #[error("RSA key operation failed: {0}")]
    Rsa(String),
}

/// Why a signature was rejected. Every variant means "invalid" to the worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature text is not strict standard base64 (alphabet `A–Z a–z 0–9 + /`, `=` padding).
    #[error("signature is not valid standard base64: {0}")]
    Base64(String),
    /// The decoded signature does not have the key's modulus length.
    #[error("signature has {actual} bytes, expected {expected} bytes for this key")]
    WrongLength {
        /// Modulus length of the verifying key in bytes.
        expected: usize,
        /// Decoded signature length.
        actual: usize,
    },
    /// Well-formed signature that does not match the message under this key.
    #[error("signature does not match the message")]
    Mismatch,
    /// `auth_data` lacks a field needed for verification, or it has the wrong JSON type.
    #[error("auth_data field `{0}` is missing or not a string")]
    MissingField(&'static str),
}

/// First `-----BEGIN <label>-----` label in `pem`, if any.
fn pem_label(pem: &str) -> Option<&str> {
    let start = pem.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &pem[start..];
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

fn describe_found(pem: &str) -> String {
    match pem_label(pem) {
        Some(label) => format!("\"{label}\""),
        None if pem.trim().is_empty() => "empty text".to_owned(),
        None => "text without a PEM header".to_owned(),
    }
}

/// The engine's RSA private key, used to sign worker URLs.
#[derive(Clone)]
pub struct SigningKey {
    inner: RsaPrivateKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("bits", &(self.inner.size() * 8))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh key with public exponent 65537.
    pub fn generate(bits: usize) -> Result<Self, KeyError> {
        if bits < MIN_KEY_BITS {
            return Err(KeyError::BadSize { bits });
        }
        let inner = RsaPrivateKey::new(&mut rand::thread_rng(), bits)
            .map_err(|e| KeyError::Rsa(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Generates a fresh [`DEFAULT_KEY_BITS`]-bit key.
    pub fn generate_default() -> Result<Self, KeyError> {
        Self::generate(DEFAULT_KEY_BITS)
    }

    /// Loads a PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8 (`BEGIN PRIVATE KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let inner = match pem_label(pem) {
            Some("RSA PRIVATE KEY") => {
                RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| KeyError::Invalid {
                    kind: "PKCS#1 RSA PRIVATE KEY",
                    reason: e.to_string(),
                })?
            }
            Some("PRIVATE KEY") => {
                RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Invalid {
                    kind: "PKCS#8 PRIVATE KEY",
                    reason: e.to_string(),
                })?
            }
            _ => {
                return Err(KeyError::UnsupportedPem {
                    expected: "\"RSA PRIVATE KEY\" (PKCS#1) or \"PRIVATE KEY\" (PKCS#8)",
                    found: describe_found(pem),
                })
            }
        };
        Ok(Self { inner })
    }

    /// The key as PKCS#8 PEM (`BEGIN PRIVATE KEY`, LF line endings).
    pub fn to_pkcs8_pem(&self) -> String {
        let pem = self
            .inner
            .to_pkcs8_pem(LineEnding::LF)
            .expect("encoding a valid in-memory RSA key as PKCS#8 cannot fail");
        pem.as_str().to_owned()
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            inner: self.inner.to_public_key(),
        }
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.inner.size() * 8
    }

    /// RSASSA-PKCS1-v1_5 signature of SHA-256(`msg`). Deterministic.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let digest = Sha256::digest(msg);
        self.inner
            .sign(Pkcs1v15Sign::new::<Sha256>(), &digest)
            .expect("PKCS#1 v1.5 signing of a SHA-256 digest with a >=1024-bit key cannot fail")
    }

    /// The `auth_data.signature` for `url`: base64 of the signature over
    /// [`signing_message`]`(url)`.
    pub fn sign_url(&self, url: &str) -> String {
        STANDARD.encode(self.sign(signing_message(url).as_bytes()))
    }
}

/// The engine's RSA public key as served by `GET /pubkey/`, used by workers to verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    inner: RsaPublicKey,
}

impl VerifyingKey {
    /// Loads an SPKI (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`) PEM.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let pem = pem.trim();
        let inner = match pem_label(pem) {
            Some("PUBLIC KEY") => {
                RsaPublicKey::from_public_key_pem(pem).map_err(|e| KeyError::Invalid {
                    kind: "SubjectPublicKeyInfo PUBLIC KEY",
                    reason: e.to_string(),
                })?
            }
            Some("RSA PUBLIC KEY") => {
                RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| KeyError::Invalid {
                    kind: "PKCS#1 RSA PUBLIC KEY",
                    reason: e.to_string(),
                })?
            }
            _ => {
                return Err(KeyError::UnsupportedPem {
                    expected:
                        "\"PUBLIC KEY\" (SubjectPublicKeyInfo) or \"RSA PUBLIC KEY\" (PKCS#1)",
                    found: describe_found(pem),
                })
            }
        };
        Ok(Self { inner })
    }

    /// The key as SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`, LF line endings),
    /// the body of `GET /pubkey/`.
    pub fn to_spki_pem(&self) -> String {
        self.inner
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding a valid in-memory RSA public key as SPKI cannot fail")
    }

    /// The key as PKCS#1 PEM (`BEGIN RSA PUBLIC KEY`, LF line endings).
    pub fn to_pkcs1_pem(&self) -> String {
        self.inner
            .to_pkcs1_pem(LineEnding::LF)
            .expect("encoding a valid in-memory RSA public key as PKCS#1 cannot fail")
    }

    /// Modulus length in bytes (= the length of every valid signature).
    pub fn signature_len(&self) -> usize {
        self.inner.size()
    }

    /// Checks an RSASSA-PKCS1-v1_5 / SHA-256 signature over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
        let expected = self.inner.size();
        if sig.len() != expected {
            return Err(SignatureError::WrongLength {
                expected,
                actual: sig.len(),
            });
        }
        let digest = Sha256::digest(msg);
        self.inner
            .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, sig)
            .map_err(|_| SignatureError::Mismatch)
    }

    /// Checks `signature_b64` (strict standard base64) against [`signing_message`]`(url)`.
    pub fn verify_url(&self, url: &str, signature_b64: &str) -> Result<(), SignatureError> {
        let sig = STANDARD
            .decode(signature_b64)
            .map_err(|e| SignatureError::Base64(e.to_string()))?;
        self.verify(signing_message(url).as_bytes(), &sig)
    }

    /// Checks an `auth_data` object: `signature` over `url`, both required strings.
    pub fn verify_auth_data(&self, auth_data: &Value) -> Result<(), SignatureError> {
        let url = auth_data
            .get("url")
            .and_then(Value::as_str)
            .ok_or(SignatureError::MissingField("url"))?;
        let signature = auth_data
            .get("signature")
            .and_then(Value::as_str)
            .ok_or(SignatureError::MissingField("signature"))?;
        self.verify_url(url, signature)
    }
}

impl std::str::FromStr for VerifyingKey {
    type Err = KeyError;

    fn from_str(pem: &str) -> Result<Self, Self::Err> {
        Self::from_pem(pem)
    }
}

impl std::str::FromStr for SigningKey {
    type Err = KeyError;

    fn from_str(pem: &str) -> Result<Self, Self::Err> {
        Self::from_pem(pem)
    }
}
