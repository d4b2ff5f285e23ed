//! Watermark keys: a 256-bit secret with the scheme's parameters, stored as
//! JSON, named by an id derived from the secret so that a verifier can say
//! which key matched without revealing it.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Green/red lists with a logit bias (Kirchenbauer et al. 2023).
    Kgw,
    /// Aaronson's exponential-minimum sampling (distortion-free).
    Gumbel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seeding {
    /// The step's function depends on the previous `h` tokens.
    LeftHash,
    /// Anchored min-hash over the previous `h` tokens and the candidate
    /// itself (Kirchenbauer et al. 2023b), sturdier under edits.
    SelfHash,
}

/// The public parameters of a key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyParams {
    pub scheme: Scheme,
    pub seeding: Seeding,
    /// KGW: the green fraction of the vocabulary.
    pub gamma: f64,
    /// KGW: the bias added to green logits.
    pub delta: f32,
    /// `h`: how many preceding tokens seed each step.
    pub context_width: usize,
}

impl Default for KeyParams {
    fn default() -> Self {
        KeyParams {
            scheme: Scheme::Kgw,
            seeding: Seeding::LeftHash,
            gamma: 0.25,
            delta: 2.0,
            context_width: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkKey {
    /// First 8 bytes of SHA-256("gpt2-watermark-id" || secret), hex.
    pub id: String,
    secret: [u8; 32],
    pub scheme: Scheme,
    pub seeding: Seeding,
    pub gamma: f64,
    pub delta: f32,
    pub context_width: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The key file's JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    id: String,
    secret: String,
    scheme: Scheme,
    seeding: Seeding,
    gamma: f64,
    delta: f32,
    context_width: usize,
}

const FORMAT: &str = "gpt2-watermark-key/1";

impl WatermarkKey {
    pub fn from_secret(secret: [u8; 32], p: KeyParams) -> WatermarkKey {
        let id = hex(&Sha256::new()
            .chain_update(b"gpt2-watermark-id")
            .chain_update(secret)
            .finalize()[..8]);
        WatermarkKey {
            id,
            secret,
            scheme: p.scheme,
            seeding: p.seeding,
            gamma: p.gamma,
            delta: p.delta,
            context_width: p.context_width,
        }
    }

    /// Checks the public parameters, naming the one at fault.
    pub fn validate_params(p: &KeyParams) -> Result<(), String> {
        if !(p.gamma > 0.0 && p.gamma < 1.0) {
            return Err(format!(
                "gamma must be between 0 and 1 (exclusive), got {}",
                p.gamma
            ));
        }
        if !(p.delta.is_finite() && p.delta >= 0.0) {
            return Err(format!(
                "delta must be a finite number >= 0, got {}",
                p.delta
            ));
        }
        if !(1..=16).contains(&p.context_width) {
            return Err(format!(
                "the context width h must be 1 to 16, got {}",
                p.context_width
            ));
        }
        Ok(())
    }

    /// Two SipHash keys' worth of HMAC-SHA256(secret, label || tokens).
    pub(crate) fn derive(&self, label: &[u8], tokens: &[u32]) -> (u64, u64) {
        // invariant: HMAC accepts keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(label);
        mac.update(&[0]);
        for t in tokens {
            mac.update(&t.to_le_bytes());
        }
        let out = mac.finalize().into_bytes();
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&out[i..i + 8]);
            u64::from_le_bytes(b)
        };
        (word(0), word(8))
    }

    pub fn to_json(&self) -> String {
        let file = KeyFile {
            format: FORMAT.into(),
            id: self.id.clone(),
            secret: hex(&self.secret),
            scheme: self.scheme,
            seeding: self.seeding,
            gamma: self.gamma,
            delta: self.delta,
            context_width: self.context_width,
        };
        // invariant: a struct of strings and numbers always serializes.
        serde_json::to_string_pretty(&file).expect("key serializes")
    }

    /// Parses a key file, checking its format, secret, parameters and id.
    pub fn from_json(text: &str, path: &str) -> Result<WatermarkKey, KeyError> {
        let bad = |message: String| KeyError::Invalid {
            path: path.to_string(),
            message,
        };
        let f: KeyFile = serde_json::from_str(text)
            .map_err(|e| bad(format!("not a watermark key file ({e})")))?;
        if f.format != FORMAT {
            return Err(bad(format!("format {:?} is not {FORMAT:?}", f.format)));
        }
        let secret = unhex(&f.secret)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| bad("the secret must be 64 hex digits".into()))?;
        let params = KeyParams {
            scheme: f.scheme,
            seeding: f.seeding,
            gamma: f.gamma,
            delta: f.delta,
            context_width: f.context_width,
        };
        Self::validate_params(&params).map_err(bad)?;
        let key = WatermarkKey::from_secret(secret, params);
        if key.id != f.id {
            return Err(bad(format!(
                "the id {} does not belong to this secret (expected {}); the file is damaged",
                f.id, key.id
            )));
        }
        Ok(key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_damage_is_named() {
        let key = WatermarkKey::from_secret([3; 32], KeyParams::default());
        let json = key.to_json();
        assert_eq!(WatermarkKey::from_json(&json, "k.json").unwrap(), key);
        let damaged = json.replace(&key.id, "0000000000000000");
        let e = WatermarkKey::from_json(&damaged, "k.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k.json") && e.contains("damaged"), "{e}");
        let e = WatermarkKey::from_json("{}", "k.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a watermark key file"), "{e}");
        let short = json.replace(&hex(&[3; 32]), "abcd");
        let e = WatermarkKey::from_json(&short, "k.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 hex digits"), "{e}");
        let bad_gamma = json.replace("\"gamma\": 0.25", "\"gamma\": 1.5");
        let e = WatermarkKey::from_json(&bad_gamma, "k.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gamma"), "{e}");
    }
}
