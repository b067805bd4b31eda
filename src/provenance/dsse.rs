//! DSSE envelopes (the standard in-toto attestations travel in): the payload, its type, and
//! ed25519 signatures over the pre-authentication encoding
//! `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths as ASCII decimal byte counts.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::keys::{PublicKey, SigningKey};

pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// Standard base64 (padded) of the payload bytes.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

/// Why an envelope does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the envelope is not signed (an unsigned build)")]
    Unsigned,
    #[error("no signature by key {0} (signed by: {1})")]
    OtherKey(String, String),
    #[error("the signature by key {0} does not verify: the envelope was altered or forged")]
    BadSignature(String),
    #[error("the envelope's payload is not valid base64")]
    BadPayload,
    #[error("the envelope's payloadType is `{0}`, not `{PAYLOAD_TYPE}`")]
    WrongType(String),
}

pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

impl Envelope {
    /// `payload` signed by `key`, or unsigned (no signatures) without one.
    pub fn new(payload: &[u8], key: Option<&SigningKey>) -> Envelope {
        let signatures = key
            .map(|k| Signature {
                keyid: k.public().keyid(),
                sig: STANDARD.encode(k.sign(&pae(PAYLOAD_TYPE, payload))),
            })
            .into_iter()
            .collect();
        Envelope {
            payload: STANDARD.encode(payload),
            payload_type: PAYLOAD_TYPE.into(),
            signatures,
        }
    }

    /// The payload bytes, once the envelope's type is in-toto's and one of its signatures by
    /// `key` verifies over them. Every signature is tried, whatever key id it claims: an id
    /// is only a hint, and a bogus signature listed first must not hide a good one.
    pub fn verify(&self, key: &PublicKey) -> Result<Vec<u8>, Refused> {
        if self.payload_type != PAYLOAD_TYPE {
            return Err(Refused::WrongType(self.payload_type.clone()));
        }
        let body = self.payload_bytes()?;
        if self.signatures.is_empty() {
            return Err(Refused::Unsigned);
        }
        let message = pae(&self.payload_type, &body);
        let good = |s: &Signature| {
            STANDARD
                .decode(&s.sig)
                .is_ok_and(|raw| key.verify(&message, &raw))
        };
        if self.signatures.iter().any(good) {
            return Ok(body);
        }
        let keyid = key.keyid();
        if self.signatures.iter().any(|s| s.keyid == keyid) {
            return Err(Refused::BadSignature(keyid));
        }
        let ids: Vec<&str> = self.signatures.iter().map(|s| s.keyid.as_str()).collect();
        Err(Refused::OtherKey(keyid, ids.join(", ")))
    }

    pub fn payload_bytes(&self) -> Result<Vec<u8>, Refused> {
        STANDARD
            .decode(&self.payload)
            .map_err(|_| Refused::BadPayload)
    }

    /// One line of JSON (the `.intoto.jsonl` convention: one envelope per line).
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("an envelope serializes");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector an independent implementation (securesystemslib, and OpenSSL) produced
    /// for seed 32 × 0x01 and payload {"hello":"world"}.
    #[test]
    fn matches_the_reference_vector() {
        let key = SigningKey::from_seed([1; 32]);
        assert_eq!(
            key.public().hex(),
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        );
        assert_eq!(
            key.public().keyid(),
            "7ab6b86cb2c9684b0ddc10896153aa2595decf4d4327a5ff1a8ab7422c828b12"
        );
        let payload = br#"{"hello":"world"}"#;
        assert_eq!(
            pae(PAYLOAD_TYPE, payload),
            b"DSSEv1 28 application/vnd.in-toto+json 17 {\"hello\":\"world\"}"
        );
        let env = Envelope::new(payload, Some(&key));
        assert_eq!(env.payload, "eyJoZWxsbyI6IndvcmxkIn0=");
        assert_eq!(
            env.signatures[0].sig,
            "eEoF6GXwQ09GNDjHgdoE+Wuv7cOnblRXWahAdCHybWm84nU6/2yzCZVA7jnQ9Fdv2z4+sF6e8r2TCgcQTuL7Bg=="
        );
        assert_eq!(env.verify(&key.public()).unwrap(), payload);
    }

    #[test]
    fn a_changed_payload_or_another_key_is_refused() {
        let key = SigningKey::from_seed([1; 32]);
        let mut env = Envelope::new(b"{}", Some(&key));
        let other = SigningKey::from_seed([2; 32]).public();
        assert!(matches!(env.verify(&other), Err(Refused::OtherKey(..))));
        env.payload = STANDARD.encode(b"{ }");
        assert!(matches!(
            env.verify(&key.public()),
            Err(Refused::BadSignature(_))
        ));
        let unsigned = Envelope::new(b"{}", None);
        assert_eq!(unsigned.verify(&key.public()), Err(Refused::Unsigned));
    }

    #[test]
    fn a_bogus_first_signature_does_not_hide_a_good_one() {
        let key = SigningKey::from_seed([1; 32]);
        let mut env = Envelope::new(b"{}", Some(&key));
        let good = env.signatures[0].clone();
        let bogus = Signature {
            keyid: good.keyid.clone(),
            sig: STANDARD.encode([0u8; 64]),
        };
        env.signatures = vec![bogus.clone(), good.clone()];
        assert_eq!(env.verify(&key.public()).unwrap(), b"{}");
        // A good signature under another key id still counts: ids are hints.
        env.signatures = vec![Signature {
            keyid: "elsewhere".into(),
            sig: good.sig,
        }];
        assert_eq!(env.verify(&key.public()).unwrap(), b"{}");
        env.signatures = vec![bogus];
        assert!(matches!(
            env.verify(&key.public()),
            Err(Refused::BadSignature(_))
        ));
    }

    #[test]
    fn another_payload_type_is_refused_even_when_signed_for() {
        let key = SigningKey::from_seed([1; 32]);
        let mut env = Envelope::new(b"{}", Some(&key));
        let other = "application/json";
        env.payload_type = other.into();
        env.signatures[0].sig = STANDARD.encode(key.sign(&pae(other, b"{}")));
        assert_eq!(
            env.verify(&key.public()),
            Err(Refused::WrongType(other.into()))
        );
    }
}
