//! Keyed watermarks for generated text, and their detectors.
//!
//! - KGW (Kirchenbauer et al. 2023): at each step a keyed pseudo-random
//!   function of the previous `h` tokens splits the vocabulary into a green
//!   fraction `gamma` and the rest, and `delta` is added to the green
//!   logits. A detector that holds the key counts green tokens: human text
//!   has a fraction `gamma` of them, watermarked text more, and the z-score
//!   says how surprising the count is.
//! - Gumbel (Aaronson 2022, "exponential minimum"): at each step the keyed
//!   function gives every token a uniform `r_v`, and the token with the
//!   largest `ln(r_v) / p_v` is emitted. Over the key's randomness this is an
//!   exact sample from `p` (no distortion), yet the emitted tokens have large
//!   `r`; the detector sums `-ln(1 - r)`, which is Gamma(T, 1) for text
//!   written without the key.
//!
//! The pseudo-random function is SipHash-2-4 under keys derived from the
//! secret with HMAC-SHA256: a function of (secret, context, token) whose
//! output is specified, so a text watermarked on one machine is detected on
//! any other. Never an RNG seeded with the key.

use crate::sip::{hash_tokens, Message};
use crate::watermark_key::{Scheme, Seeding, WatermarkKey};
use gpt2_generate::{Tokens, Watermark};
use serde::Serialize;
use siphasher::sip::SipHasher24;
use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};

pub use crate::watermark_key::KeyError;

/// The keyed pseudo-random function, with the per-key tables it needs.
pub struct Prf {
    key: WatermarkKey,
    vocab: usize,
    /// KGW: a token is green when its bits are below this.
    green_below: u128,
    /// SelfHash: each token's anchor hash, for the min over the window.
    anchors: Vec<u64>,
    self_key: (u64, u64),
}

impl Prf {
    pub fn new(key: WatermarkKey, vocab: usize) -> Prf {
        let anchor_key = key.derive(b"anchor", &[]);
        let anchors = match key.seeding {
            Seeding::SelfHash => (0..vocab as u32).map(|t| sip(anchor_key, &[t])).collect(),
            Seeding::LeftHash => Vec::new(),
        };
        let self_key = key.derive(b"self-hash", &[]);
        Prf {
            green_below: green_threshold(key.gamma),
            key,
            vocab,
            anchors,
            self_key,
        }
    }

    pub fn key(&self) -> &WatermarkKey {
        &self.key
    }

    /// The SipHash key for a step whose preceding tokens end with `context`
    /// (`h` tokens).
    fn step_key(&self, context: &[u32]) -> StepKey {
        match self.key.seeding {
            Seeding::LeftHash => StepKey::Left(self.key.derive(b"left-hash", context)),
            Seeding::SelfHash => {
                let min = context
                    .iter()
                    .map(|&t| self.anchor(t))
                    .min()
                    .unwrap_or(u64::MAX);
                StepKey::SelfMin(min)
            }
        }
    }

    fn anchor(&self, t: u32) -> u64 {
        self.anchors.get(t as usize).copied().unwrap_or(u64::MAX)
    }

    /// The token's pseudo-random 64 bits at this step.
    fn bits(&self, step: StepKey, token: u32) -> u64 {
        match step {
            StepKey::Left(k) => sip(k, &[token]),
            // SelfHash: the anchor is the min over the context *and* the
            // candidate, so one edited context token rarely changes it.
            StepKey::SelfMin(min) => {
                let m = min.min(self.anchor(token));
                sip(self.self_key, &[(m >> 32) as u32, m as u32, token])
            }
        }
    }

    /// `out[i]` = the bits of `tokens[i]` at this step, eight at a time.
    fn bits_many(&self, step: StepKey, tokens: &[u32], out: &mut [u64]) {
        match step {
            StepKey::Left(k) => hash_tokens(k, Message::Token, tokens, out),
            StepKey::SelfMin(min) => {
                let words: Vec<u64> = tokens.iter().map(|&t| min.min(self.anchor(t))).collect();
                hash_tokens(self.self_key, Message::AnchorThenToken(&words), tokens, out)
            }
        }
    }

    /// What the pseudo-random bits of `token` after `context` are a
    /// function of: pairs with one identity get the same bits, so the
    /// detector counts each identity once. With LeftHash that is the
    /// context and the token; with SelfHash, the min-anchor of the window
    /// and the token, so windows that share both are one draw, not several
    /// (counting them apart made repetitive human text look watermarked).
    fn draw_id(&self, context: &[u32], token: u32) -> (u128, u32) {
        match self.step_key(context) {
            StepKey::SelfMin(min) => (min.min(self.anchor(token)) as u128, token),
            left => (left.id(), token),
        }
    }

    /// Whether `token` is green after `context` (KGW).
    pub fn is_green(&self, context: &[u32], token: u32) -> bool {
        self.green(self.step_key(context), token)
    }

    fn green(&self, step: StepKey, token: u32) -> bool {
        self.green_bits(self.bits(step, token))
    }

    /// Whether a token with these bits is green.
    fn green_bits(&self, bits: u64) -> bool {
        (bits as u128) < self.green_below
    }

    /// The token's uniform in (0, 1) after `context` (Gumbel).
    pub fn uniform(&self, context: &[u32], token: u32) -> f64 {
        to_unit(self.bits(self.step_key(context), token))
    }
}

const TWO_64: f64 = 18_446_744_073_709_551_616.0;

/// Green is defined as `(bits as f64) < gamma * 2^64`; as an integer test
/// that is `bits < X` for the smallest X with `(X as f64) >= gamma * 2^64`
/// (the conversion is monotone), found by bisection.
fn green_threshold(gamma: f64) -> u128 {
    let threshold = gamma * TWO_64;
    let (mut lo, mut hi) = (0u128, 1u128 << 64);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if mid == 1u128 << 64 || (mid as u64 as f64) >= threshold {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

fn to_unit(bits: u64) -> f64 {
    ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[derive(Clone, Copy)]
enum StepKey {
    Left((u64, u64)),
    SelfMin(u64),
}

impl StepKey {
    /// A name for the step's function (one seeding per key, so the two
    /// kinds never meet in one cache).
    fn id(self) -> u128 {
        match self {
            StepKey::Left((a, b)) => ((a as u128) << 64) | b as u128,
            StepKey::SelfMin(m) => m as u128,
        }
    }
}

fn sip(key: (u64, u64), words: &[u32]) -> u64 {
    let mut h = SipHasher24::new_with_keys(key.0, key.1);
    for w in words {
        h.write(&w.to_le_bytes());
    }
    h.finish()
}

/// A key's watermark on generation, attached to any number of sequences:
/// KGW as a bias on the logits, Gumbel as the final choice. A step's full
/// green list (KGW with every token a candidate) is computed eight tokens
/// at a time and cached by its context, since the same contexts recur
/// across steps and sequences.
pub struct Watermarker {
    prf: Prf,
    greens: Mutex<HashMap<u128, Arc<[u64]>>>,
}

/// Green lists kept (each vocabulary/8 bytes: 6.3 kB for GPT-2).
const GREEN_CACHE: usize = 4096;

impl Watermarker {
    pub fn new(prf: Prf) -> Watermarker {
        Watermarker {
            prf,
            greens: Mutex::new(HashMap::new()),
        }
    }

    /// The step after `history`, when it holds a full context (shorter
    /// histories are neither marked nor scored).
    fn step_after(&self, history: &[u32]) -> Option<StepKey> {
        let h = self.prf.key.context_width;
        (history.len() >= h).then(|| self.prf.step_key(&history[history.len() - h..]))
    }

    /// The step's green list over the whole vocabulary, as a bitset.
    fn green_list(&self, step: StepKey) -> Arc<[u64]> {
        let id = step.id();
        let mut cache = self.greens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = cache.get(&id) {
            return g.clone();
        }
        drop(cache);
        let vocab = self.prf.vocab;
        let tokens: Vec<u32> = (0..vocab as u32).collect();
        let mut bits = vec![0u64; vocab];
        self.prf.bits_many(step, &tokens, &mut bits);
        let mut set = vec![0u64; vocab.div_ceil(64)];
        for (v, &b) in bits.iter().enumerate() {
            if self.prf.green_bits(b) {
                set[v / 64] |= 1 << (v % 64);
            }
        }
        let set: Arc<[u64]> = set.into();
        cache = self.greens.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= GREEN_CACHE {
            if let Some(&evict) = cache.keys().next() {
                cache.remove(&evict);
            }
        }
        cache.insert(id, set.clone());
        set
    }
}

impl Watermark for Watermarker {
    fn max_bias(&self) -> f32 {
        match self.prf.key.scheme {
            Scheme::Kgw => self.prf.key.delta.max(0.0),
            Scheme::Gumbel => 0.0,
        }
    }

    /// KGW: `delta` on every green logit, before temperature and filtering.
    fn bias(&self, history: &[u32], tokens: Tokens<'_>, logits: &mut [f32]) {
        if self.prf.key.scheme != Scheme::Kgw {
            return;
        }
        let Some(step) = self.step_after(history) else {
            return;
        };
        let delta = self.prf.key.delta;
        match tokens {
            Tokens::All => {
                let set = self.green_list(step);
                for (w, chunk) in set.iter().zip(logits.chunks_mut(64)) {
                    let mut w = *w;
                    while w != 0 {
                        let i = w.trailing_zeros() as usize;
                        if let Some(l) = chunk.get_mut(i) {
                            *l += delta;
                        }
                        w &= w - 1;
                    }
                }
                // Tokens past the PRF's vocabulary (none for GPT-2).
                for (v, l) in logits.iter_mut().enumerate().skip(self.prf.vocab) {
                    if self.prf.green(step, v as u32) {
                        *l += delta;
                    }
                }
            }
            Tokens::Only(ids) => {
                let mut bits = vec![0u64; ids.len()];
                self.prf.bits_many(step, ids, &mut bits);
                for (l, &b) in logits.iter_mut().zip(&bits) {
                    if self.prf.green_bits(b) {
                        *l += delta;
                    }
                }
            }
        }
    }

    /// KGW: `delta` if `token` is green at this step (one keyed hash).
    fn token_bias(&self, history: &[u32], token: u32) -> Option<f32> {
        if self.prf.key.scheme != Scheme::Kgw {
            return None;
        }
        let step = self.step_after(history)?;
        Some(if self.prf.green(step, token) {
            self.prf.key.delta
        } else {
            0.0
        })
    }

    /// Gumbel: of the sampler's final candidates, the one with the largest
    /// ln(r_v) / p_v, p being exactly the distribution the sampler would
    /// have drawn from (after repetition penalty, temperature, top-k and
    /// top-p).
    fn choose(&self, history: &[u32], candidates: &[u32], weights: &[f32]) -> Option<u32> {
        // The choice is a function of the context, so a context seen before
        // would repeat its token and loop forever; there the sampler draws
        // normally (the detector counts each pair once).
        if self.prf.key.scheme != Scheme::Gumbel {
            return None;
        }
        let step = self.step_after(history)?;
        if context_repeats(history, self.prf.key.context_width) {
            return None;
        }
        let mut bits = vec![0u64; candidates.len()];
        self.prf.bits_many(step, candidates, &mut bits);
        gumbel_argmax(candidates, weights, &bits)
    }
}

/// The candidate with the largest ln(r) / w (the last of equals, over
/// positive weights). Scaling the weights by a constant does not move it,
/// so they need no normalising. Most candidates are ruled out without a
/// logarithm: ln(r) <= r - 1, so r - 1 below best * w cannot win.
fn gumbel_argmax(candidates: &[u32], weights: &[f32], bits: &[u64]) -> Option<u32> {
    let value = |i: usize| to_unit(bits[i]).ln() / weights[i] as f64;
    let heaviest = (0..weights.len())
        .filter(|&i| weights[i] > 0.0)
        .max_by(|&a, &b| weights[a].total_cmp(&weights[b]))?;
    let mut best = value(heaviest);
    let mut arg = heaviest;
    for i in 0..candidates.len() {
        let w = weights[i] as f64;
        if weights[i] <= 0.0 {
            continue;
        }
        // A margin for rounding: only a clear loser is skipped.
        if to_unit(bits[i]) - 1.0 < best * w * (1.0 + 1e-6) {
            continue;
        }
        let v = value(i);
        if v >= best {
            best = v;
            arg = i;
        }
    }
    Some(candidates[arg])
}

/// Whether the last `h` tokens of `history` occurred earlier in it, with a
/// token after them.
fn context_repeats(history: &[u32], h: usize) -> bool {
    let n = history.len();
    let context = &history[n - h..];
    history[..n - 1].windows(h).any(|w| w == context)
}

/// What the detector found in a text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub z_score: f64,
    pub p_value: f64,
    pub tokens_scored: usize,
    /// KGW: the fraction of scored tokens that are green. Gumbel: the
    /// fraction whose r is above one half.
    pub green_fraction: f64,
    pub key_id: String,
    /// One entry per token of the text: green (KGW) or r > 1/2 (Gumbel).
    pub green_mask: Vec<bool>,
    /// "watermarked", "not watermarked", or "too short to decide".
    pub decision: &'static str,
}

/// Fewest scored tokens for a verdict; below it the detector abstains.
pub const MIN_SCORED_TOKENS: usize = 16;

/// Tests `tokens` (the canonical encoding of the text) for the watermark;
/// `prompt` supplies the context of the first tokens and is not scored.
/// Each pseudo-random draw counts once (see `Prf::draw_id`), so repeated
/// phrases cannot inflate the score.
pub fn detect(prf: &Prf, prompt: &[u32], tokens: &[u32], z_threshold: f64) -> Detection {
    let h = prf.key.context_width;
    let mut all = prompt.to_vec();
    all.extend_from_slice(tokens);
    let mut seen = HashSet::new();
    let mut mask = Vec::with_capacity(tokens.len());
    let (mut scored, mut hits, mut gumbel_sum) = (0usize, 0usize, 0f64);
    for i in prompt.len()..all.len() {
        if i < h {
            mask.push(false);
            continue;
        }
        let context = &all[i - h..i];
        let token = all[i];
        let (hit, r) = match prf.key.scheme {
            Scheme::Kgw => (prf.is_green(context, token), 0.0),
            Scheme::Gumbel => {
                let r = prf.uniform(context, token);
                (r > 0.5, r)
            }
        };
        mask.push(hit);
        if seen.insert(prf.draw_id(context, token)) {
            scored += 1;
            hits += usize::from(hit);
            gumbel_sum += -(1.0 - r).ln();
        }
    }
    let (z, p) = match prf.key.scheme {
        Scheme::Kgw => {
            let g = prf.key.gamma;
            let n = scored as f64;
            let z = (hits as f64 - g * n) / (n * g * (1.0 - g)).sqrt();
            (z, normal_upper_tail(z))
        }
        Scheme::Gumbel => {
            let n = scored as f64;
            (
                (gumbel_sum - n) / n.sqrt(),
                gamma_upper_tail(scored, gumbel_sum),
            )
        }
    };
    let (z, p) = if scored == 0 { (0.0, 1.0) } else { (z, p) };
    // Decided on the p-value that a normal z of `z_threshold` has: for KGW
    // that is z >= z_threshold; Gumbel's statistic is a Gamma sum, skewed
    // right, so its z alone would overstate the evidence.
    let decision = if scored < MIN_SCORED_TOKENS {
        "too short to decide"
    } else if p <= normal_upper_tail(z_threshold) {
        "watermarked"
    } else {
        "not watermarked"
    };
    Detection {
        z_score: z,
        p_value: p,
        tokens_scored: scored,
        green_fraction: if scored == 0 {
            0.0
        } else {
            hits as f64 / scored as f64
        },
        key_id: prf.key.id.clone(),
        green_mask: mask,
        decision,
    }
}

/// P(Z >= z) for a standard normal.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' `erfcc`, relative
/// error below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398
                                + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// P(X >= s) for X ~ Gamma(n, 1), n a whole number: the probability that a
/// Poisson(s) count is below n, summed in log space.
pub fn gamma_upper_tail(n: usize, s: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let mut log_term = -s; // k = 0: e^-s s^0 / 0!
    let mut log_sum = log_term;
    for k in 1..n {
        log_term += s.ln() - (k as f64).ln();
        let (a, b) = (log_sum.max(log_term), log_sum.min(log_term));
        log_sum = a + (b - a).exp().ln_1p();
    }
    log_sum.exp().min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watermark_key::KeyParams;

    fn key(scheme: Scheme, seeding: Seeding) -> WatermarkKey {
        WatermarkKey::from_secret(
            [7; 32],
            KeyParams {
                scheme,
                seeding,
                ..KeyParams::default()
            },
        )
    }

    #[test]
    fn green_lists_are_fixed_by_key_and_context_and_have_gamma_of_the_vocabulary() {
        let prf = Prf::new(key(Scheme::Kgw, Seeding::LeftHash), 50257);
        let green = (0..50257).filter(|&v| prf.is_green(&[464], v)).count();
        assert!((green as f64 / 50257.0 - 0.25).abs() < 0.01, "{green}");
        // The function is specified (HMAC-SHA256, SipHash-2-4, little-endian
        // words): these bits are the same on every platform and release.
        let mask: String = (0..32)
            .map(|v| if prf.is_green(&[464], v) { '1' } else { '0' })
            .collect();
        assert_eq!(mask, "00010000000100010100100001101110");
        let other = Prf::new(
            WatermarkKey::from_secret([8; 32], KeyParams::default()),
            50257,
        );
        let same = (0..1000)
            .filter(|&v| prf.is_green(&[464], v) == other.is_green(&[464], v))
            .count();
        assert!(
            same < 700,
            "a different key gives a different list ({same} of 1000 agree)"
        );
    }

    #[test]
    fn biased_tokens_are_detected_and_plain_ones_are_not() {
        for seeding in [Seeding::LeftHash, Seeding::SelfHash] {
            let prf = Prf::new(key(Scheme::Kgw, seeding), 1000);
            // A "text" that always picks a green token, and one that ignores the key.
            let mut marked = vec![1u32];
            let mut plain = vec![1u32];
            for i in 0..200u32 {
                let ctx = [*marked.last().unwrap()];
                let next = (0..1000)
                    .map(|v| (v * 7 + i) % 1000)
                    .find(|&v| prf.is_green(&ctx, v))
                    .unwrap();
                marked.push(next);
                plain.push((i * 7919 + 13) % 1000);
            }
            let d = detect(&prf, &[], &marked, 4.0);
            assert!(
                d.z_score > 10.0 && d.decision == "watermarked",
                "{seeding:?} {d:?}"
            );
            let d = detect(&prf, &[], &plain, 4.0);
            assert!(
                d.z_score < 4.0 && d.decision == "not watermarked",
                "{seeding:?} {d:?}"
            );
        }
    }

    #[test]
    fn repeated_pairs_count_once_and_short_texts_abstain() {
        let prf = Prf::new(key(Scheme::Kgw, Seeding::LeftHash), 1000);
        let d = detect(&prf, &[], &[5, 6, 5, 6, 5, 6, 5, 6], 4.0);
        assert_eq!(d.tokens_scored, 2); // (5 -> 6) and (6 -> 5)
        assert_eq!(d.green_mask.len(), 8);
        assert_eq!(d.decision, "too short to decide");
        let d = detect(&prf, &[], &[5], 4.0);
        assert_eq!((d.tokens_scored, d.decision), (0, "too short to decide"));
        // The prompt gives context but is not scored.
        assert_eq!(detect(&prf, &[5], &[6], 4.0).tokens_scored, 1);
    }

    #[test]
    fn gumbel_sampling_follows_the_distribution_and_is_detected() {
        let prf = Prf::new(key(Scheme::Gumbel, Seeding::LeftHash), 4);
        let p = Watermarker::new(prf);
        // Over many contexts, the choice frequencies match softmax(logits)...
        let logits = [0.0f32, 1.0, 2.0, 0.5];
        let weights = logits.map(f32::exp);
        let mut counts = [0usize; 4];
        let mut excess = 0.0;
        for c in 0..20000u32 {
            let v = p.choose(&[c], &[0, 1, 2, 3], &weights).unwrap();
            counts[v as usize] += 1;
            excess += -(1.0 - p.prf.uniform(&[c], v)).ln() - 1.0;
        }
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for v in 0..4 {
            let want = logits[v].exp() / z;
            assert!(
                (counts[v] as f32 / 20000.0 - want).abs() < 0.015,
                "{counts:?}"
            );
        }
        // ...yet the chosen tokens' r is far above chance.
        assert!(excess / 20000f64.sqrt() > 20.0, "{excess}");
        // A generated chain is detected; the same chain under another key is not.
        let prf = Prf::new(key(Scheme::Gumbel, Seeding::LeftHash), 1000);
        let p = Watermarker::new(prf);
        let mut chain = vec![1u32];
        let candidates: Vec<u32> = (0..1000).collect();
        for _ in 0..200 {
            let ctx = *chain.last().unwrap();
            let weights: Vec<f32> = (0..1000u32)
                .map(|v| (((v * 31 + ctx * 17) % 97) as f32 / 20.0).exp())
                .collect();
            chain.push(p.choose(&[ctx], &candidates, &weights).unwrap());
        }
        let d = detect(&p.prf, &[], &chain, 4.0);
        assert!(d.z_score > 4.0 && d.p_value < 1e-4, "{d:?}");
        let other = Prf::new(
            WatermarkKey::from_secret(
                [9; 32],
                KeyParams {
                    scheme: Scheme::Gumbel,
                    ..KeyParams::default()
                },
            ),
            1000,
        );
        assert!(detect(&other, &[], &chain, 4.0).z_score < 4.0);
    }

    #[test]
    fn the_batched_and_cached_green_lists_are_the_per_token_ones() {
        for seeding in [Seeding::LeftHash, Seeding::SelfHash] {
            let mut k = key(Scheme::Kgw, seeding);
            k.context_width = 3;
            let vocab = 5000;
            let w = Watermarker::new(Prf::new(k, vocab));
            let delta = w.prf.key.delta;
            for history in [[1u32, 2, 3], [4000, 17, 2], [1, 2, 3]] {
                let mut all = vec![0f32; vocab];
                w.bias(&history, Tokens::All, &mut all);
                let ids: Vec<u32> = (0..vocab as u32).step_by(7).collect();
                let mut some = vec![0f32; ids.len()];
                w.bias(&history, Tokens::Only(&ids), &mut some);
                for (v, &got) in all.iter().enumerate() {
                    let want = if w.prf.is_green(&history, v as u32) {
                        delta
                    } else {
                        0.0
                    };
                    assert_eq!(got, want, "{seeding:?} token {v}");
                }
                for (i, &v) in ids.iter().enumerate() {
                    assert_eq!(some[i], all[v as usize]);
                    assert_eq!(w.token_bias(&history, v), Some(all[v as usize]));
                }
            }
        }
    }

    #[test]
    fn the_integer_green_test_is_the_f64_definition() {
        for gamma in [0.25, 0.5, 0.1, 1.0 / 3.0] {
            let x = green_threshold(gamma);
            let t = gamma * TWO_64;
            for d in [0u128, 1, 2, 1000, 4096, 1 << 20] {
                for b in [x.saturating_sub(d), x + d] {
                    let b = b.min(u64::MAX as u128) as u64;
                    assert_eq!((b as u128) < x, (b as f64) < t, "gamma {gamma} bits {b}");
                }
            }
        }
    }

    #[test]
    fn the_pruned_gumbel_choice_is_the_plain_argmax() {
        let prf = Prf::new(key(Scheme::Gumbel, Seeding::LeftHash), 3000);
        let candidates: Vec<u32> = (0..3000).collect();
        for ctx in 0..50u32 {
            let weights: Vec<f32> = (0..3000u32)
                .map(|v| (((v * 31 + ctx * 17) % 97) as f32 / 9.0 - 8.0).exp())
                .collect();
            let step = prf.step_key(&[ctx]);
            let mut bits = vec![0; 3000];
            prf.bits_many(step, &candidates, &mut bits);
            let plain = candidates
                .iter()
                .zip(&weights)
                .filter(|(_, &w)| w > 0.0)
                .map(|(&v, &w)| (to_unit(prf.bits(step, v)).ln() / w as f64, v))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, v)| v);
            assert_eq!(gumbel_argmax(&candidates, &weights, &bits), plain);
        }
    }

    #[test]
    fn gumbel_does_not_loop_on_a_repeated_context() {
        assert!(context_repeats(&[1, 2, 3, 1, 2], 2));
        assert!(!context_repeats(&[1, 2, 3, 2, 1], 2));
        assert!(!context_repeats(&[5], 1));
        assert!(context_repeats(&[5, 5], 1));
    }

    #[test]
    fn tails() {
        assert!((normal_upper_tail(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_upper_tail(4.0) - 3.167e-5).abs() < 1e-8);
        assert!((normal_upper_tail(-1.0) - 0.841345).abs() < 1e-6);
        // Gamma(1, 1) is Exp(1): P(X >= 2) = e^-2.
        assert!((gamma_upper_tail(1, 2.0) - (-2f64).exp()).abs() < 1e-12);
        // Gamma(3, 1) at its mean.
        let want = (-3f64).exp() * (1.0 + 3.0 + 4.5);
        assert!((gamma_upper_tail(3, 3.0) - want).abs() < 1e-12);
    }

    #[test]
    fn selfhash_counts_windows_sharing_their_anchor_once() {
        let key = WatermarkKey::from_secret(
            [5; 32],
            KeyParams {
                seeding: Seeding::SelfHash,
                context_width: 2,
                ..KeyParams::default()
            },
        );
        let prf = Prf::new(key, 1000);
        // `a` has the smallest anchor, so every window holding it draws
        // from (anchor(a), candidate), whatever else is in the window.
        let a = (0..1000u32).min_by_key(|&t| prf.anchor(t)).unwrap();
        let t = if a == 7 { 8 } else { 7 };
        let mut tokens = Vec::new();
        for x in (100..150u32).filter(|&x| x != a && x != t) {
            tokens.extend([a, x, t]);
        }
        let d = detect(&prf, &[], &tokens, 4.0);
        // One draw per x (after [t, a]), one for every t, one for every a:
        // not one per window (about three per x).
        let xs = tokens.len() / 3;
        assert!(
            (xs..=xs + 2).contains(&d.tokens_scored),
            "{} draws",
            d.tokens_scored
        );
    }
}
