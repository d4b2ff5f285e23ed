//! The sampler. Order as in Hugging Face's `generate`: the watermark's
//! bias, repetition penalty, temperature, top-k, top-p, then a draw (or the
//! watermark's choice).
//!
//! Draws use ChaCha8 seeded with the user's seed (stream = sample index), a
//! generator whose output is specified, so the same seed gives the same
//! samples on every platform. Buffers live in the sampler: sampling a token
//! allocates nothing once they have grown.
//!
//! With top-k (and greedy decoding, which is top-1) only a few hundred of
//! the 50,257 tokens can be drawn, so the sampler works on those alone: the
//! k-th largest logit before any bias is a floor that the final k-th
//! largest cannot fall below, and a token whose logit plus the watermark's
//! largest bias stays under it can never be a candidate. The watermark is
//! then evaluated for the candidates only, and the result is exactly what
//! biasing the whole vocabulary would have given.

use gpt2_model::kernels::{log_softmax_stats, simd};
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

    fn is_greedy(&self) -> bool {
        self.temperature < MIN_TEMPERATURE
    }
}

/// Which tokens a slice of logits belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Tokens<'a> {
    /// The whole vocabulary: `logits[v]` is token `v`'s.
    All,
    /// `logits[i]` is token `ids[i]`'s.
    Only(&'a [u32]),
}

/// A keyed watermark attached to a sequence. It depends only on the
/// sequence's history, so one instance (`&self`, shared) serves every
/// sequence of a batch, in parallel.
pub trait Watermark: Send + Sync {
    /// The most `bias` adds to any logit (0 for schemes that only choose).
    fn max_bias(&self) -> f32 {
        0.0
    }

    /// Adds the watermark's bias to the logits of `tokens` at the step
    /// after `history` (prompt and generated tokens), before the
    /// repetition penalty, temperature and filtering (KGW).
    fn bias(&self, _history: &[u32], _tokens: Tokens<'_>, _logits: &mut [f32]) {}

    /// The bias `bias` would add to `token`'s logit at this step, for a
    /// sampler that draws by rejection instead of biasing every logit;
    /// `None` where the watermark cannot say for one token.
    fn token_bias(&self, _history: &[u32], _token: u32) -> Option<f32> {
        None
    }

    /// Replaces the random draw: given the final candidates and their
    /// unnormalised probabilities (after every filter), picks one, or
    /// `None` to let the sampler draw. The hook for distortion-free
    /// schemes (Gumbel), which must choose from exactly the distribution
    /// the sampler would have drawn from.
    fn choose(&self, _history: &[u32], _candidates: &[u32], _weights: &[f32]) -> Option<u32> {
        None
    }
}

/// A sampled token and its log-probability under the model's own
/// distribution (before the watermark, temperature and filtering).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    pub token: u32,
    pub logprob: f32,
}

/// Samples one sequence's tokens.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Tokens already penalised in this sequence (each is penalised once).
    seen: Vec<bool>,
    seen_list: Vec<u32>,
    /// exp(raw - max), for the model's log-probability.
    exps: Vec<f32>,
    /// The candidates, ascending by id, and their logits as they are
    /// transformed (`values[i]` is `candidates[i]`'s).
    candidates: Vec<u32>,
    values: Vec<f32>,
    /// Positions into `candidates` (nucleus), and the draw's weights.
    order: Vec<u32>,
    probs: Vec<f32>,
    /// Running sums of `probs` (rejection sampling).
    cumulative: Vec<f64>,
    /// The k largest values seen so far (a min-heap).
    heap: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64, stream: u64, vocab: usize) -> Sampler {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Sampler {
            params,
            rng,
            seen: vec![false; vocab],
            seen_list: Vec::new(),
            exps: Vec::new(),
            candidates: Vec::new(),
            values: Vec::new(),
            order: Vec::new(),
            probs: Vec::new(),
            cumulative: Vec::new(),
            heap: Vec::new(),
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

    /// Picks the next token from one row of raw logits. Only ids below
    /// `drawable` are ever drawn (padded vocabularies have ids the
    /// tokenizer cannot decode). `history` is the prompt and the tokens
    /// generated so far: what the watermark sees.
    pub fn pick(
        &mut self,
        raw: &[f32],
        drawable: usize,
        history: &[u32],
        watermark: Option<&dyn Watermark>,
    ) -> Pick {
        self.exps.resize(raw.len(), 0.0);
        let (max, lse) = log_softmax_stats(raw, &mut self.exps);
        let token = self.choose_token(&raw[..drawable.clamp(1, raw.len())], history, watermark);
        Pick {
            token,
            logprob: raw[token as usize] - max - lse,
        }
    }

    /// As [`Sampler::pick`] on plain logits, without a watermark.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.pick(logits, logits.len(), &[], None).token
    }

    fn choose_token(&mut self, raw: &[f32], history: &[u32], wm: Option<&dyn Watermark>) -> u32 {
        if let Some(w) = wm.filter(|w| self.draws_by_rejection(raw.len(), *w)) {
            if let Some(token) = self.draw_rejecting(raw, history, w) {
                return token;
            }
        }
        self.filter(raw, history, wm);
        if self.params.is_greedy() {
            // filter kept the largest alone (the lowest id among ties).
            return self.candidates[0];
        }
        self.draw(history, wm)
    }

    /// Whether this step can sample the watermarked distribution by
    /// rejection: the whole vocabulary is in play (no top-k, top-p or
    /// penalty that would need every biased logit) and the watermark only
    /// biases.
    fn draws_by_rejection(&self, vocab: usize, w: &dyn Watermark) -> bool {
        let p = self.params;
        !p.is_greedy()
            && (p.top_k == 0 || p.top_k >= vocab)
            && p.top_p >= 1.0
            && p.repetition_penalty == 1.0
            && w.max_bias() > 0.0
    }

    /// Samples from softmax((raw + bias) / T) without computing the bias
    /// of every token: draw `v` from softmax(raw / T), keep it with
    /// probability exp((bias(v) - max_bias) / T), else draw again. Exact,
    /// and a few keyed hashes per token instead of a whole green list
    /// (KGW at gamma 0.25, delta 2: about 3 draws). `None` when the
    /// watermark cannot give a single token's bias (the caller then biases
    /// the whole vocabulary), or, in theory, after too many rejections.
    fn draw_rejecting(&mut self, raw: &[f32], history: &[u32], w: &dyn Watermark) -> Option<u32> {
        const MAX_DRAWS: usize = 10_000;
        let inv_t = 1.0 / self.params.temperature;
        self.probs.clear();
        self.probs.extend(raw.iter().map(|&l| l * inv_t));
        let max = simd::max(&self.probs);
        simd::exp_shifted_sum(&mut self.probs, max);
        self.cumulative.clear();
        let mut total = 0f64;
        for &e in &self.probs {
            total += e as f64;
            self.cumulative.push(total);
        }
        let max_bias = w.max_bias();
        for _ in 0..MAX_DRAWS {
            let u = self.rng.random::<f64>() * total;
            let v = self
                .cumulative
                .partition_point(|&c| c <= u)
                .min(raw.len() - 1) as u32;
            let b = w.token_bias(history, v)?;
            if b >= max_bias || self.rng.random::<f64>() < (((b - max_bias) * inv_t) as f64).exp() {
                return Some(v);
            }
        }
        None
    }

    /// Leaves the final candidates (ascending by id) and their values
    /// (watermarked, penalised, divided by the temperature) in
    /// `candidates` and `values`.
    fn filter(&mut self, raw: &[f32], history: &[u32], wm: Option<&dyn Watermark>) {
        let p = self.params;
        let k = if p.is_greedy() { 1 } else { p.top_k };
        if k > 0 && k < raw.len() {
            self.gather_candidates(raw, k, wm.map_or(0.0, |w| w.max_bias()));
            for (v, &c) in self.values.iter_mut().zip(&self.candidates) {
                *v = raw[c as usize];
            }
            if let Some(w) = wm {
                w.bias(history, Tokens::Only(&self.candidates), &mut self.values);
            }
            self.penalize();
            self.keep_top(k);
        } else {
            self.candidates.clear();
            self.candidates.extend(0..raw.len() as u32);
            self.values.clear();
            self.values.extend_from_slice(raw);
            if let Some(w) = wm {
                w.bias(history, Tokens::All, &mut self.values);
            }
            self.penalize();
        }
        if p.is_greedy() {
            return;
        }
        if p.temperature != 1.0 {
            let inv_t = 1.0 / p.temperature;
            self.values.iter_mut().for_each(|l| *l *= inv_t);
        }
        if p.top_p < 1.0 {
            self.nucleus(p.top_p);
        }
    }

    /// Applies the repetition penalty to the seen candidates' values
    /// (candidates are ascending by id, so a search finds each).
    fn penalize(&mut self) {
        let rp = self.params.repetition_penalty;
        if rp == 1.0 {
            return;
        }
        for &t in &self.seen_list {
            if let Ok(i) = self.candidates.binary_search(&t) {
                self.values[i] = penalized(self.values[i], rp);
            }
        }
    }

    /// Every token that could be among the top `k` once the watermark has
    /// added at most `max_bias` and the penalty has been applied, ascending
    /// by id, into `candidates` (and `values` sized to match).
    fn gather_candidates(&mut self, raw: &[f32], k: usize, max_bias: f32) {
        let rp = self.params.repetition_penalty;
        let penalty = rp != 1.0;
        // The k-th largest value without any bias: a floor for the final one.
        let floor = if penalty {
            self.values.clear();
            self.values.extend_from_slice(raw);
            for &t in &self.seen_list {
                if let Some(v) = self.values.get_mut(t as usize) {
                    *v = penalized(*v, rp);
                }
            }
            kth_largest(&self.values, k, &mut self.heap)
        } else {
            kth_largest(raw, k, &mut self.heap)
        };
        let cut = floor - max_bias;
        self.candidates.clear();
        for (v, &l) in raw.iter().enumerate() {
            if l >= cut && !(penalty && self.seen[v]) {
                self.candidates.push(v as u32);
            }
        }
        if penalty {
            // A seen token's penalty is not a shift: test its own bounds.
            for &t in &self.seen_list {
                let Some(&l) = raw.get(t as usize) else {
                    continue;
                };
                // The penalty is monotone and the bias non-negative.
                if penalized(l + max_bias, rp) >= floor {
                    self.candidates.push(t);
                }
            }
            self.candidates.sort_unstable();
        }
        self.values.clear();
        self.values.resize(self.candidates.len(), 0.0);
    }

    /// Keeps the `k` largest candidates (ties: lower id), ascending by id.
    fn keep_top(&mut self, k: usize) {
        if self.candidates.len() <= k {
            return;
        }
        self.order.clear();
        self.order.extend(0..self.candidates.len() as u32);
        let values = &self.values;
        self.order.select_nth_unstable_by(k - 1, |a, b| {
            values[*b as usize]
                .total_cmp(&values[*a as usize])
                .then(a.cmp(b))
        });
        self.order.truncate(k);
        self.order.sort_unstable();
        self.compact();
    }

    /// Keeps the candidates at the positions in `order`.
    fn compact(&mut self) {
        for (n, &i) in self.order.iter().enumerate() {
            self.candidates[n] = self.candidates[i as usize];
            self.values[n] = self.values[i as usize];
        }
        self.candidates.truncate(self.order.len());
        self.values.truncate(self.order.len());
    }

    /// Keeps the smallest set of most likely candidates whose probability
    /// reaches `top_p`. Grows a partial selection instead of sorting the
    /// whole vocabulary.
    fn nucleus(&mut self, top_p: f32) {
        let values = &self.values;
        let max = simd::max(values);
        let total: f64 = values.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let order = &mut self.order;
        order.clear();
        order.extend(0..values.len() as u32);
        let by_value = |a: &u32, b: &u32| {
            values[*b as usize]
                .total_cmp(&values[*a as usize])
                .then(a.cmp(b))
        };
        let mut k = 64.min(order.len());
        'grow: loop {
            if k < order.len() {
                order.select_nth_unstable_by(k - 1, by_value);
            }
            order[..k].sort_unstable_by(by_value);
            let mut mass = 0f64;
            for (n, &i) in order[..k].iter().enumerate() {
                mass += ((values[i as usize] - max) as f64).exp() / total;
                if mass >= top_p as f64 {
                    order.truncate(n + 1);
                    break 'grow;
                }
            }
            if k == order.len() {
                break;
            }
            k = (k * 4).min(order.len());
        }
        order.sort_unstable();
        self.compact();
    }

    fn draw(&mut self, history: &[u32], wm: Option<&dyn Watermark>) -> u32 {
        self.probs.clear();
        self.probs.extend_from_slice(&self.values);
        let max = simd::max(&self.probs);
        simd::exp_shifted_sum(&mut self.probs, max);
        if let Some(token) = wm.and_then(|w| w.choose(history, &self.candidates, &self.probs)) {
            return token;
        }
        let total: f64 = self.probs.iter().map(|&e| e as f64).sum();
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

/// CTRL's repetition penalty of one logit.
fn penalized(l: f32, rp: f32) -> f32 {
    if l < 0.0 {
        l * rp
    } else {
        l / rp
    }
}

/// The `k`-th largest of `values` (1 <= k <= len), in one pass that keeps
/// the k largest in a min-heap: most values fail the first comparison.
fn kth_largest(values: &[f32], k: usize, heap: &mut Vec<f32>) -> f32 {
    heap.clear();
    for &v in values {
        if heap.len() < k {
            heap.push(v);
            let last = heap.len() - 1;
            sift_up(heap, last);
        } else if v > heap[0] {
            heap[0] = v;
            sift_down(heap, 0);
        }
    }
    heap[0]
}

fn sift_up(h: &mut [f32], mut i: usize) {
    while i > 0 {
        let parent = (i - 1) / 2;
        if h[i].total_cmp(&h[parent]).is_lt() {
            h.swap(i, parent);
            i = parent;
        } else {
            break;
        }
    }
}

fn sift_down(h: &mut [f32], mut i: usize) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut m = i;
        if l < h.len() && h[l].total_cmp(&h[m]).is_lt() {
            m = l;
        }
        if r < h.len() && h[r].total_cmp(&h[m]).is_lt() {
            m = r;
        }
        if m == i {
            break;
        }
        h.swap(i, m);
        i = m;
    }
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
        assert_eq!(s.sample(&[0.1, 2.0, 1.9, -1.0]), 1);
        let mut s = Sampler::new(params(0.0, 0, 1.0, 2.0), 0, 0, 4);
        s.observe(&[1, 1, 1]);
        // 2.0 / 2 = 1.0 < 1.9: the penalty is applied once, not per occurrence.
        assert_eq!(s.sample(&[0.1, 2.0, 1.9, -1.0]), 2);
        // -0.5 * 2 = -1.0 < -0.8: negative logits are multiplied.
        let mut s = Sampler::new(params(0.0, 0, 1.0, 2.0), 0, 0, 3);
        s.observe(&[0]);
        assert_eq!(s.sample(&[-0.5, -0.8, -3.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [3.0f32, 2.0, 1.0, 0.0, -1.0];
        for seed in 0..200 {
            let mut s = Sampler::new(params(1.0, 2, 1.0, 1.0), seed, 0, 5);
            assert!(s.sample(&logits) < 2);
            // p = [.64, .24, .09, ...]: top-p 0.7 keeps the first two.
            let mut s = Sampler::new(params(1.0, 0, 0.7, 1.0), seed, 0, 5);
            assert!(s.sample(&logits) < 2);
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
        s.values.extend_from_slice(&logits);
        s.nucleus(0.9);
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
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
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
            counts[s.sample(&logits) as usize] += 1;
        }
        for (c, want) in counts.iter().zip([10000.0, 20000.0, 30000.0]) {
            assert!((*c as f64 - want).abs() < 600.0, "{counts:?}");
        }
    }

    /// Adds 2.5 to every token whose id is divisible by 3 (a stand-in for
    /// KGW's keyed green list; the history is ignored).
    struct EveryThird;

    impl Watermark for EveryThird {
        fn max_bias(&self) -> f32 {
            2.5
        }
        fn bias(&self, _history: &[u32], tokens: Tokens<'_>, logits: &mut [f32]) {
            for (i, l) in logits.iter_mut().enumerate() {
                let id = match tokens {
                    Tokens::All => i as u32,
                    Tokens::Only(ids) => ids[i],
                };
                if id % 3 == 0 {
                    *l += 2.5;
                }
            }
        }
    }

    /// The candidates biasing, penalising and filtering the whole
    /// vocabulary gives, as the sampler did before it restricted the work.
    fn reference(raw: &[f32], p: SamplingParams, seen: &[u32]) -> Vec<(u32, f32)> {
        let mut l = raw.to_vec();
        EveryThird.bias(&[], Tokens::All, &mut l);
        let mut uniq = seen.to_vec();
        uniq.sort();
        uniq.dedup();
        for &t in &uniq {
            l[t as usize] = penalized(l[t as usize], p.repetition_penalty);
        }
        let mut ids: Vec<u32> = (0..l.len() as u32).collect();
        ids.sort_by(|a, b| l[*b as usize].total_cmp(&l[*a as usize]).then(a.cmp(b)));
        let k = if p.is_greedy() { 1 } else { p.top_k };
        ids.truncate(k);
        ids.sort();
        let t = if p.is_greedy() { 1.0 } else { p.temperature };
        ids.iter()
            .map(|&i| {
                (
                    i,
                    if t != 1.0 {
                        l[i as usize] * (1.0 / t)
                    } else {
                        l[i as usize]
                    },
                )
            })
            .collect()
    }

    #[test]
    fn restricted_top_k_equals_filtering_the_whole_vocabulary() {
        let v = 3000;
        for case in 0..60u64 {
            let raw: Vec<f32> = (0..v)
                .map(|i| (((i as u64 * 2654435761 + case * 97) % 1000) as f32 / 100.0) - 5.0)
                .collect();
            let k = [1, 5, 40, 200][case as usize % 4];
            let rp = [1.0, 1.3, 0.7][case as usize % 3];
            let p = params(if case % 5 == 0 { 0.0 } else { 0.8 }, k, 1.0, rp);
            let seen: Vec<u32> = (0..30)
                .map(|j| ((j * 101 + case * 7) % v as u64) as u32)
                .collect();
            let mut s = Sampler::new(p, case, 0, v);
            s.observe(&seen);
            s.filter(&raw, &[], Some(&EveryThird));
            let got: Vec<(u32, f32)> = s
                .candidates
                .iter()
                .copied()
                .zip(s.values.iter().copied())
                .collect();
            assert_eq!(got, reference(&raw, p, &seen), "case {case}");
        }
    }

    impl EveryThird {
        fn of(token: u32) -> f32 {
            if token.is_multiple_of(3) {
                2.5
            } else {
                0.0
            }
        }
    }

    #[test]
    fn rejection_sampling_draws_the_watermarked_distribution() {
        struct PerToken;
        impl Watermark for PerToken {
            fn max_bias(&self) -> f32 {
                2.5
            }
            fn bias(&self, h: &[u32], t: Tokens<'_>, l: &mut [f32]) {
                EveryThird.bias(h, t, l)
            }
            fn token_bias(&self, _h: &[u32], token: u32) -> Option<f32> {
                Some(EveryThird::of(token))
            }
        }
        let logits = [1.0f32, 0.0, 2.0, -1.0, 0.5, 1.5];
        for t in [1.0f32, 0.7] {
            let want: Vec<f64> = {
                let w: Vec<f64> = (0..6)
                    .map(|v| (((logits[v] + EveryThird::of(v as u32)) / t) as f64).exp())
                    .collect();
                let z: f64 = w.iter().sum();
                w.iter().map(|x| x / z).collect()
            };
            let mut s = Sampler::new(params(t, 0, 1.0, 1.0), 9, 0, 6);
            assert!(s.draws_by_rejection(6, &PerToken));
            let mut counts = [0usize; 6];
            let n = 60000;
            for _ in 0..n {
                counts[s.pick(&logits, 6, &[1], Some(&PerToken)).token as usize] += 1;
            }
            for v in 0..6 {
                let got = counts[v] as f64 / n as f64;
                assert!(
                    (got - want[v]).abs() < 0.01,
                    "T {t}: {counts:?} vs {want:?}"
                );
            }
            // Top-p or a penalty need every biased logit: no rejection.
            assert!(!Sampler::new(params(t, 0, 0.9, 1.0), 9, 0, 6).draws_by_rejection(6, &PerToken));
            assert!(!Sampler::new(params(t, 0, 1.0, 1.2), 9, 0, 6).draws_by_rejection(6, &PerToken));
        }
    }

    #[test]
    fn kth_largest_matches_a_sort() {
        let vals: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 613) as f32).collect();
        let mut sorted = vals.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut heap = Vec::new();
        for k in [1, 2, 40, 999, 1000] {
            assert_eq!(kth_largest(&vals, k, &mut heap), sorted[k - 1]);
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
