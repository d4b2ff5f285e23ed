//! Scoring a text: the log-probability, rank and entropy of every token
//! under the model, the first token conditioned on `<|endoftext|>`.
//!
//! Texts longer than the context are scored in windows. With stride `S`,
//! window `k` scores the targets `S*k .. S*(k+1)` and feeds the model as
//! much left context as fits (the context length minus the targets in the
//! window). With `S` = the context length (the default) this is exactly
//! lm-evaluation-harness's rolling loglikelihood: disjoint windows, the
//! first one starting at `<|endoftext|>`, the last one filled with context.

use crate::cache::KvCache;
use crate::config::END_OF_TEXT;
use crate::error::{ModelError, Result};
use crate::kernels::{log_softmax_stats, simd};
use crate::model::{Batch, Model, Output, Scratch};
use rayon::prelude::*;

#[derive(Debug, Clone, PartialEq)]
pub struct TokenScore {
    pub id: u32,
    pub logprob: f32,
    /// 1 for the most likely token; ties rank by strict inequality.
    pub rank: u32,
    /// Entropy of the predicted distribution, in nats.
    pub entropy: f32,
    /// The most likely tokens at this position with their log-probabilities,
    /// most likely first (empty unless asked for).
    pub top: Vec<(u32, f32)>,
}

/// How many window rows one forward pass may hold; bounds memory on long
/// texts (activations are about 10 floats per row per embedding width).
const MAX_BATCH_ROWS: usize = 2048;
/// Rows of logits materialised at once (each is a full vocabulary, so this
/// is 50 MB for GPT-2); large enough that `gemm` packs the embedding
/// matrix rarely.
const LOGIT_CHUNK_ROWS: usize = 256;

/// Reusable state for scoring with one model.
pub struct Scorer<'m> {
    model: &'m Model,
    cache: KvCache,
    scratch: Scratch,
    logits: Vec<f32>,
    prefix: u32,
}

/// One window: positions `start..end` of the sequence `[EOT] + tokens` are
/// fed, and its last `targets` outputs are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub targets: usize,
}

/// The windows that score every token of a text of `n` tokens exactly once.
pub fn windows(n: usize, n_ctx: usize, stride: usize) -> Result<Vec<Window>> {
    if stride == 0 || stride > n_ctx {
        return Err(ModelError::InvalidRequest(format!(
            "stride must be between 1 and the context length {n_ctx}, got {stride}"
        )));
    }
    let mut out = Vec::new();
    let mut first_target = 1; // index into [EOT] + tokens
    while first_target <= n {
        let last_target = (first_target + stride).min(n + 1); // exclusive
        let end = last_target - 1; // inputs are positions start..end
        let start = end.saturating_sub(n_ctx);
        out.push(Window {
            start,
            end,
            targets: last_target - first_target,
        });
        first_target = last_target;
    }
    Ok(out)
}

impl<'m> Scorer<'m> {
    pub fn new(model: &'m Model) -> Scorer<'m> {
        let n_ctx = model.config().n_ctx;
        let slots = (MAX_BATCH_ROWS / n_ctx).max(1);
        Scorer {
            model,
            cache: KvCache::new(model.config(), slots, n_ctx),
            scratch: Scratch::default(),
            logits: Vec::new(),
            prefix: END_OF_TEXT,
        }
    }

    /// Conditions the first token on `prefix` instead of `<|endoftext|>`
    /// (for models with another vocabulary).
    pub fn with_prefix_token(mut self, prefix: u32) -> Self {
        self.prefix = prefix;
        self
    }

    /// Scores every token of `tokens`; `top_n` alternatives per position.
    pub fn score(
        &mut self,
        tokens: &[u32],
        stride: usize,
        top_n: usize,
    ) -> Result<Vec<TokenScore>> {
        let mut seq = Vec::with_capacity(tokens.len() + 1);
        seq.push(self.prefix);
        seq.extend_from_slice(tokens);
        let n_ctx = self.model.config().n_ctx;
        let all = windows(tokens.len(), n_ctx, stride)?;
        let mut scores = Vec::with_capacity(tokens.len());
        let mut rest = &all[..];
        while !rest.is_empty() {
            let take = batch_len(rest, self.cache.slots());
            self.score_batch(&seq, &rest[..take], top_n, &mut scores)?;
            rest = &rest[take..];
        }
        Ok(scores)
    }

    fn score_batch(
        &mut self,
        seq: &[u32],
        batch: &[Window],
        top_n: usize,
        scores: &mut Vec<TokenScore>,
    ) -> Result<()> {
        let mut segments = Batch::default();
        for (slot, w) in batch.iter().enumerate() {
            segments.push(slot, &seq[w.start..w.end]);
        }
        self.cache.reset_all();
        self.model
            .forward(&segments, &mut self.cache, &mut self.scratch, Output::All)?;
        // The rows to score: the last `targets` rows of each window.
        let mut rows = Vec::new();
        let mut row0 = 0;
        for w in batch {
            let len = w.end - w.start;
            rows.extend((row0 + len - w.targets..row0 + len).zip(w.end + 1 - w.targets..=w.end));
            row0 += len;
        }
        let (c, v) = (self.model.config().n_embd, self.model.config().vocab_size);
        for chunk in rows.chunks(LOGIT_CHUNK_ROWS) {
            let hidden = self.scratch.hidden(c);
            let mut h = Vec::with_capacity(chunk.len() * c);
            for &(row, _) in chunk {
                h.extend_from_slice(&hidden[row * c..(row + 1) * c]);
            }
            if self.logits.len() < chunk.len() * v {
                self.logits.resize(chunk.len() * v, 0.0);
            }
            self.model.lm_head(&h, chunk.len(), &mut self.logits);
            let rows: Vec<TokenScore> = self.logits[..chunk.len() * v]
                .par_chunks(v)
                .zip(chunk.par_iter())
                .map_init(
                    || vec![0f32; v],
                    |work, (logits, &(_, target))| score_row(logits, seq[target], top_n, work),
                )
                .collect();
            scores.extend(rows);
        }
        Ok(())
    }
}

/// As many windows as fit the slots and the row budget (at least one).
fn batch_len(windows: &[Window], slots: usize) -> usize {
    let mut rows = 0;
    let mut n = 0;
    for w in windows.iter().take(slots) {
        rows += w.end - w.start;
        if n > 0 && rows > MAX_BATCH_ROWS {
            break;
        }
        n += 1;
    }
    n
}

/// Log-probability, rank, entropy and top alternatives of `target` under
/// one row of logits.
pub fn score_row(logits: &[f32], target: u32, top_n: usize, work: &mut [f32]) -> TokenScore {
    let (max, lse) = log_softmax_stats(logits, work);
    // work now holds exp(l - max); H = lse - sum(p * (l - max)).
    let sum = lse.exp();
    let weighted = simd::dot(work, logits) - max * sum;
    let entropy = lse - weighted / sum;
    let t = logits[target as usize];
    let rank = 1 + logits.iter().filter(|&&l| l > t).count() as u32;
    TokenScore {
        id: target,
        logprob: t - max - lse,
        rank,
        entropy,
        top: top_k(logits, top_n)
            .into_iter()
            .map(|i| (i, logits[i as usize] - max - lse))
            .collect(),
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(values: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let order = |a: &u32, b: &u32| {
        values[*b as usize]
            .total_cmp(&values[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_unstable_by(order);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_target_once_with_full_context() {
        for (n, ctx, stride) in [
            (1, 4, 4),
            (4, 4, 4),
            (5, 4, 4),
            (11, 4, 4),
            (11, 4, 2),
            (11, 4, 1),
            (3, 8, 8),
        ] {
            let ws = windows(n, ctx, stride).unwrap();
            let mut covered = Vec::new();
            for w in &ws {
                assert!(
                    w.end - w.start <= ctx && w.targets <= stride && w.targets <= w.end - w.start
                );
                covered.extend(w.end + 1 - w.targets..=w.end);
                // Each window is as long as the text before it allows.
                assert_eq!(w.end - w.start, w.end.min(ctx));
            }
            assert_eq!(
                covered,
                (1..=n).collect::<Vec<_>>(),
                "n={n} ctx={ctx} stride={stride}"
            );
        }
        assert!(windows(5, 4, 0).is_err() && windows(5, 4, 5).is_err());
        assert!(windows(0, 4, 4).unwrap().is_empty());
    }

    #[test]
    fn lm_eval_rolling_windows_for_the_default_stride() {
        // lm-eval: first window [EOT] + t[0..3] -> t[0..4]; then t[3..7] -> t[4..8];
        // last: t[6..10] -> t[8..10] (inputs filled with context).
        let ws = windows(10, 4, 4).unwrap();
        assert_eq!(
            ws,
            vec![
                Window {
                    start: 0,
                    end: 4,
                    targets: 4
                },
                Window {
                    start: 4,
                    end: 8,
                    targets: 4
                },
                Window {
                    start: 6,
                    end: 10,
                    targets: 2
                }
            ]
        );
    }

    #[test]
    fn row_statistics() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let mut work = [0.0; 4];
        let s = score_row(&logits, 2, 2, &mut work);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((s.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(s.rank, 3);
        let h: f64 = logits
            .iter()
            .map(|&l| {
                let p = (l as f64).exp() / z;
                -p * p.ln()
            })
            .sum();
        assert!((s.entropy as f64 - h).abs() < 1e-5);
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
    }
}
