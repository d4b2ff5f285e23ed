//! Logits processors and the sampler. Order as in Hugging Face's
//! `generate`: repetition penalty, temperature, top-k, top-p, then a draw.
//!
//! Draws use ChaCha8 seeded with the user's seed (stream = sample index), a
//! generator whose output is specified, so the same seed gives the same
//! samples on every platform. Buffers live in the sampler: sampling a token
//! allocates nothing.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Temperatures below this sample greedily.
pub const MIN_TEMPERATURE: f32 = 1e-4;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 (or anything below `MIN_TEMPERATURE`) means greedy (argmax).
    pub temperature: f32,
    /// 0 means no top-k filter.
    pub top_k: usize,
    /// 1.0 means no nucleus filter.
    pub top_p: f32,
    /// 1.0 means none; CTRL's penalty (Keskar et al. 2019) as in
    /// transformers: seen tokens' positive logits are divided by it,
    /// negative ones multiplied.
    pub repetition_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 40,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingParams {
    /// Rejects values that have no meaning, naming the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(format!(
                "repetition penalty must be a finite number > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// A step that reshapes the next-token logits given the sequence so far
/// (prompt and generated tokens). The hook point for watermarking.
pub trait LogitsProcessor: Send {
    fn process(&mut self, history: &[u32], logits: &mut [f32]);
}

/// Replaces the sampler's random draw: given the final candidates and
/// their unnormalised probabilities (after the repetition penalty,
/// temperature, top-k and top-p), picks one, or returns `None` to let the
/// sampler draw. The hook point for distortion-free watermarks, which must
/// choose from exactly the distribution the sampler would have drawn from.
pub trait TokenChooser: Send {
    fn choose(&mut self, history: &[u32], candidates: &[u32], weights: &[f32]) -> Option<u32>;
}

/// A final draw offered to a caller: `(candidates, weights) -> Some(token)`
/// to choose, `None` to let the sampler draw.
pub type Choose<'a> = dyn FnMut(&[u32], &[f32]) -> Option<u32> + 'a;

/// Samples one sequence's tokens.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Tokens already penalised in this sequence (each is penalised once).
    seen: Vec<bool>,
    seen_list: Vec<u32>,
    candidates: Vec<u32>,
    probs: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64, stream: u64, vocab: usize) -> Sampler {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Sampler {
            params,
            rng,
            seen: vec![false; vocab],
            seen_list: Vec::with_capacity(1024),
            candidates: Vec::with_capacity(vocab),
            probs: Vec::with_capacity(vocab),
        }
    }

    /// Records tokens (the prompt, then each sampled token) for the
    /// repetition penalty.
    pub fn observe(&mut self, tokens: &[u32]) {
        for &t in tokens {
            if let Some(s) = self.seen.get_mut(t as usize) {
                if !*s {
                    *s = true;
                    self.seen_list.push(t);
                }
            }
        }
    }

    /// Picks the next token from `logits` (modified in place).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.sample_choosing(logits, &mut |_, _| None)
    }

    /// As [`Sampler::sample`], with `choose(candidates, weights)` offered
    /// the final draw (greedy decoding has no draw to offer).
    pub fn sample_choosing(&mut self, logits: &mut [f32], choose: &mut Choose<'_>) -> u32 {
        let p = self.params;
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen_list {
                let l = &mut logits[t as usize];
                *l = if *l < 0.0 {
                    *l * p.repetition_penalty
                } else {
                    *l / p.repetition_penalty
                };
            }
        }
        // Dividing by a temperature this small would overflow to infinities;
        // the limit is greedy anyway.
        if p.temperature < MIN_TEMPERATURE {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        logits.iter_mut().for_each(|l| *l *= inv_t);
        self.candidates.clear();
        self.candidates.extend(0..logits.len() as u32);
        if p.top_k > 0 && p.top_k < logits.len() {
            select_top(&mut self.candidates, logits, p.top_k);
        }
        if p.top_p < 1.0 {
            self.nucleus(logits, p.top_p);
        }
        self.draw(logits, choose)
    }

    /// Keeps the smallest set of most likely candidates whose probability
    /// reaches `top_p`. Grows a partial selection instead of sorting the
    /// whole vocabulary.
    fn nucleus(&mut self, logits: &[f32], top_p: f32) {
        let max = self
            .candidates
            .iter()
            .map(|&i| logits[i as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = self
            .candidates
            .iter()
            .map(|&i| ((logits[i as usize] - max) as f64).exp())
            .sum();
        let mut k = 64.min(self.candidates.len());
        loop {
            partition_top(&mut self.candidates, logits, k);
            self.candidates[..k].sort_unstable_by(|a, b| {
                logits[*b as usize]
                    .total_cmp(&logits[*a as usize])
                    .then(a.cmp(b))
            });
            let mut mass = 0f64;
            for (n, &i) in self.candidates[..k].iter().enumerate() {
                mass += ((logits[i as usize] - max) as f64).exp() / total;
                if mass >= top_p as f64 {
                    self.candidates.truncate(n + 1);
                    return;
                }
            }
            if k == self.candidates.len() {
                return;
            }
            k = (k * 4).min(self.candidates.len());
        }
    }

    fn draw(&mut self, logits: &[f32], choose: &mut Choose<'_>) -> u32 {
        let max = self
            .candidates
            .iter()
            .map(|&i| logits[i as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        let mut total = 0f64;
        for &i in &self.candidates {
            let e = ((logits[i as usize] - max) as f64).exp();
            total += e;
            self.probs.push(e as f32);
        }
        if let Some(token) = choose(&self.candidates, &self.probs) {
            return token;
        }
        let mut u = self.rng.random::<f64>() * total;
        for (&i, &e) in self.candidates.iter().zip(&self.probs) {
            u -= e as f64;
            if u < 0.0 {
                return i;
            }
        }
        // Rounding left a sliver of mass: the last candidate takes it.
        *self
            .candidates
            .last()
            .expect("invariant: at least one candidate")
    }
}

/// Moves the `k` largest-logit candidates to the front (ties: lower id).
fn partition_top(candidates: &mut [u32], logits: &[f32], k: usize) {
    if k > 0 && k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, |a, b| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        });
    }
}

/// Keeps only the `k` largest-logit candidates.
fn select_top(candidates: &mut Vec<u32>, logits: &[f32], k: usize) {
    let k = k.clamp(1, candidates.len());
    partition_top(candidates, logits, k);
    candidates.truncate(k);
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        temperature: f32,
        top_k: usize,
        top_p: f32,
        repetition_penalty: f32,
    ) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            repetition_penalty,
        }
    }

    #[test]
    fn greedy_and_penalty() {
        let mut s = Sampler::new(params(0.0, 0, 1.0, 1.0), 0, 0, 4);
        assert_eq!(s.sample(&mut [0.1, 2.0, 1.9, -1.0]), 1);
        let mut s = Sampler::new(params(0.0, 0, 1.0, 2.0), 0, 0, 4);
        s.observe(&[1, 1, 1]);
        // 2.0 / 2 = 1.0 < 1.9: the penalty is applied once, not per occurrence.
        let mut l = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(s.sample(&mut l), 2);
        assert_eq!(l[1], 1.0);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [3.0f32, 2.0, 1.0, 0.0, -1.0];
        for seed in 0..200 {
            let mut s = Sampler::new(params(1.0, 2, 1.0, 1.0), seed, 0, 5);
            assert!(s.sample(&mut logits.clone()) < 2);
            // p = [.64, .24, .09, ...]: top-p 0.7 keeps the first two.
            let mut s = Sampler::new(params(1.0, 0, 0.7, 1.0), seed, 0, 5);
            assert!(s.sample(&mut logits.clone()) < 2);
        }
    }

    #[test]
    fn nucleus_over_a_large_vocabulary_matches_a_full_sort() {
        let v = 5000;
        let logits: Vec<f32> = (0..v).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let mut mass = 0.0;
        let mut keep = 0;
        for &i in &order {
            mass += (logits[i] as f64).exp() / z;
            keep += 1;
            if mass >= 0.9 {
                break;
            }
        }
        let mut s = Sampler::new(params(1.0, 0, 0.9, 1.0), 1, 0, v);
        s.candidates.extend(0..v as u32);
        s.nucleus(&logits, 0.9);
        assert_eq!(s.candidates.len(), keep);
        let mut got: Vec<usize> = s.candidates.iter().map(|&i| i as usize).collect();
        got.sort();
        let mut want = order[..keep].to_vec();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn same_seed_same_draws_and_streams_differ() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 13) as f32 * 0.1).collect();
        let run = |seed, stream| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, 1.0), seed, stream, 100);
            (0..50)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5, 0), run(5, 0));
        assert_ne!(run(5, 0), run(5, 1));
        assert_ne!(run(5, 0), run(6, 0));
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()]; // p = 1/6, 2/6, 3/6
        let mut s = Sampler::new(params(1.0, 0, 1.0, 1.0), 42, 0, 3);
        let mut counts = [0usize; 3];
        for _ in 0..60000 {
            counts[s.sample(&mut logits.clone()) as usize] += 1;
        }
        for (c, want) in counts.iter().zip([10000.0, 20000.0, 30000.0]) {
            assert!((*c as f64 - want).abs() < 600.0, "{counts:?}");
        }
    }

    #[test]
    fn invalid_params_are_named() {
        assert!(params(-1.0, 0, 1.0, 1.0)
            .validate()
            .unwrap_err()
            .contains("temperature"));
        assert!(params(1.0, 0, 0.0, 1.0)
            .validate()
            .unwrap_err()
            .contains("top-p"));
        assert!(params(1.0, 0, 1.0, 0.0)
            .validate()
            .unwrap_err()
            .contains("repetition"));
        assert!(params(f32::NAN, 0, 1.0, 1.0).validate().is_err());
    }
}
