//! Signing keys: ed25519, kept as PKCS#8 PEM (`runner key generate` makes one); public keys
//! read as 64 hex digits, a PEM SubjectPublicKeyInfo, or a securesystemslib key document.
//! A key's id is the one securesystemslib computes — the sha256 of its canonical JSON — so
//! envelopes verify with the standard tools as they are.

use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, Verifier};

use crate::digest::sha256_hex;
use crate::error::{Error, IoContext, Result};

pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    /// The file it was loaded from: a secret no build context may hold.
    path: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl SigningKey {
    pub fn generate() -> SigningKey {
        SigningKey::from_seed(rand::random())
    }

    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            path: None,
        }
    }

    pub fn load(path: &Path) -> Result<SigningKey> {
        let pem = std::fs::read_to_string(path)
            .ctx(|| format!("cannot read key `{}`", path.display()))?;
        ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .map(|key| SigningKey {
                key,
                path: Some(path.to_owned()),
            })
            .map_err(|e| Error::BadFile {
                path: path.to_owned(),
                problem: format!("not an ed25519 private key in PKCS#8 PEM ({e})"),
            })
    }

    /// The file the key was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn to_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an ed25519 key encodes")
            .to_string()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

impl PublicKey {
    /// 64 hex digits, a PEM public key, or `{"keyval": {"public": "<hex>"}, …}`.
    pub fn parse(text: &str) -> std::result::Result<PublicKey, String> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            return ed25519_dalek::VerifyingKey::from_public_key_pem(text)
                .map(PublicKey)
                .map_err(|e| format!("not an ed25519 public key: {e}"));
        }
        let hex_text = if text.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            v["keyval"]["public"]
                .as_str()
                .ok_or("a key document without keyval.public")?
                .to_owned()
        } else {
            text.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let bytes: [u8; 32] = hex::decode(&hex_text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("expected an ed25519 public key as 64 hex digits")?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| e.to_string())
    }

    /// `--key` as a file holding a key, or the key itself.
    pub fn load(arg: &str) -> Result<PublicKey> {
        let path = Path::new(arg);
        let text = if path.is_file() {
            std::fs::read_to_string(path).ctx(|| format!("cannot read key `{arg}`"))?
        } else {
            arg.to_owned()
        };
        PublicKey::parse(&text).map_err(|e| Error::BadArgument {
            problem: format!("key `{arg}`: {e}"),
        })
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn pem(&self) -> String {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .expect("an ed25519 key encodes")
    }

    /// securesystemslib's key id: sha256 of the canonical JSON of the key (keys sorted, no
    /// whitespace).
    pub fn keyid(&self) -> String {
        sha256_hex(
            format!(
                r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}},"scheme":"ed25519"}}"#,
                self.hex()
            )
            .as_bytes(),
        )
    }

    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        self.0.verify(message, &sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_files() {
        let key = SigningKey::generate();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, key.to_pem()).unwrap();
        let again = SigningKey::load(&path).unwrap();
        assert_eq!(again.public(), key.public());
        for text in [key.public().hex(), key.public().pem()] {
            assert_eq!(PublicKey::parse(&text).unwrap(), key.public());
        }
        let doc = format!(
            r#"{{"keytype":"ed25519","keyval":{{"public":"{}"}}}}"#,
            key.public().hex()
        );
        assert_eq!(PublicKey::parse(&doc).unwrap(), key.public());
        assert!(PublicKey::parse("nothex").is_err());
    }
}
