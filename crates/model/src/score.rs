//! Scoring a text: the log-probability, rank and entropy of every token
//! under the model, the first token conditioned on `<|endoftext|>`.
//!
//! Texts longer than the context are scored in windows over the sequence
//! `[EOT] + tokens`, in one of two ways (see [`Windowing`]):
//! lm-evaluation-harness's rolling loglikelihood (disjoint windows, the last
//! one filled with context; the default), or Hugging Face's sliding window
//! (each window scores only its last `stride` tokens).
//!
//! Underneath both is [`Scorer::score_spans`]: any list of (input, targets)
//! pairs, batched into shared forward passes, which is also what the
//! evaluation tasks use for many short examples.

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
    /// Entropy of the predicted distribution, in nats: minus the mean of
    /// log p under the model's own distribution.
    pub entropy: f32,
    /// Variance of log p under the model's own distribution (the sigma^2 of
    /// Fast-DetectGPT's analytic criterion).
    pub logprob_variance: f32,
    /// Whether this token is the argmax, ties going to the lowest id (as
    /// `torch.argmax`, which lm-eval's `is_greedy` uses).
    pub is_argmax: bool,
    /// The most likely tokens at this position with their log-probabilities,
    /// most likely first (empty unless asked for).
    pub top: Vec<(u32, f32)>,
}

impl TokenScore {
    /// Whether greedy decoding would have chosen this token (lm-eval's
    /// `is_greedy`).
    pub fn is_greedy(&self) -> bool {
        self.is_argmax
    }
}

/// How many window rows one forward pass may hold; bounds memory on long
/// texts (activations are about 10 floats per row per embedding width).
const MAX_BATCH_ROWS: usize = 2048;
/// Key/value cells (sequences x longest sequence) one batch may reserve.
const MAX_BATCH_CELLS: usize = 2 * MAX_BATCH_ROWS;
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

/// One piece of scoring work: the model reads `input`, and its last
/// `targets.len()` outputs are scored against `targets` (output `i` of the
/// input predicts the token after input `i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub input: Vec<u32>,
    pub targets: Vec<u32>,
}

/// How a text longer than the context is cut into windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windowing {
    /// lm-evaluation-harness's `loglikelihood_rolling`: disjoint windows of
    /// the context length, the first starting at `<|endoftext|>`, the last
    /// one filled with as much preceding context as fits.
    Rolling,
    /// Hugging Face's "perplexity of fixed-length models": windows of the
    /// context length start every `stride` tokens, and each scores only the
    /// tokens no earlier window scored (the first scores all of its own).
    Sliding { stride: usize },
    /// llama.cpp's `llama-perplexity -c CTX`: `[EOT] + tokens` cut into
    /// disjoint chunks of `ctx` (a remainder is dropped), the first token of
    /// each chunk replaced by `<|endoftext|>`, and only the last
    /// `ctx - 1 - ctx / 2` positions of each chunk scored. It scores about
    /// half of the tokens, so it is for comparing with llama.cpp, not for
    /// a perplexity of the whole text.
    LlamaPerplexity { ctx: usize },
}

impl Windowing {
    /// Whether every token of the text is scored (once).
    pub fn scores_every_token(self) -> bool {
        !matches!(self, Windowing::LlamaPerplexity { .. })
    }
}

/// One window: positions `start..end` of the sequence `[EOT] + tokens` are
/// fed, and its last `targets` outputs are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub targets: usize,
}

/// The windows over a text of `n` tokens: every token scored exactly once,
/// except with [`Windowing::LlamaPerplexity`].
pub fn windows(n: usize, n_ctx: usize, windowing: Windowing) -> Result<Vec<Window>> {
    match windowing {
        Windowing::Rolling => Ok(rolling_windows(n, n_ctx)),
        // At stride == n_ctx Hugging Face's loop drops the first label of
        // every window; rolling windows are the disjoint case done right.
        Windowing::Sliding { stride } if stride == 0 || stride >= n_ctx => {
            Err(ModelError::InvalidRequest(format!(
                "stride must be between 1 and {} (the context length minus one; \
                 without a stride, texts are scored in lm-eval's rolling windows), got {stride}",
                n_ctx.saturating_sub(1)
            )))
        }
        Windowing::Sliding { stride } => Ok(sliding_windows(n, n_ctx, stride)),
        Windowing::LlamaPerplexity { ctx } => llama_chunks(n, n_ctx, ctx),
    }
}

/// llama-perplexity's chunks over `[EOT] + tokens` (its `perplexity()` in
/// tools/perplexity/perplexity.cpp, with one sequence per chunk).
fn llama_chunks(n: usize, n_ctx: usize, ctx: usize) -> Result<Vec<Window>> {
    if !(4..=n_ctx).contains(&ctx) {
        return Err(ModelError::InvalidRequest(format!(
            "llama-perplexity chunks must be between 4 and {n_ctx} (the context length) tokens, got {ctx}"
        )));
    }
    if n + 1 < 2 * ctx {
        return Err(ModelError::InvalidRequest(format!(
            "llama-perplexity's windows need at least {} tokens (2 x {ctx}, counting the leading \
             <|endoftext|>); the text has {}",
            2 * ctx,
            n + 1
        )));
    }
    let scored = ctx - 1 - ctx / 2;
    Ok((0..(n + 1) / ctx)
        .map(|i| Window {
            start: i * ctx,
            end: i * ctx + ctx - 1,
            targets: scored,
        })
        .collect())
}

/// How many of a text's `n` tokens `windowing` scores.
pub fn scored_tokens(n: usize, n_ctx: usize, windowing: Windowing) -> Result<usize> {
    Ok(windows(n, n_ctx, windowing)?
        .iter()
        .map(|w| w.targets)
        .sum())
}

/// lm-eval's `get_rolling_token_windows` with `context_len = 1`, followed by
/// `make_disjoint_window`, in positions of `[EOT] + tokens`.
fn rolling_windows(n: usize, n_ctx: usize) -> Vec<Window> {
    let mut out = Vec::new();
    let mut scored = 0; // tokens scored so far
    while scored < n {
        let targets = (n - scored).min(n_ctx);
        let end = scored + targets; // the last input is seq[end - 1]
        out.push(Window {
            start: end.saturating_sub(n_ctx),
            end,
            targets,
        });
        scored = end;
    }
    out
}

/// Hugging Face's loop: `for begin in range(0, N, stride)`, the window
/// `seq[begin..min(begin + n_ctx, N)]` scoring the labels past the previous
/// window's end, stopping at the window that reaches the end. Its last input
/// predicts nothing, so it is not fed.
fn sliding_windows(n: usize, n_ctx: usize, stride: usize) -> Vec<Window> {
    let len = n + 1;
    let mut out = Vec::new();
    let mut prev_end = 1; // seq[0] is the prefix, never a label
    let mut begin = 0;
    while prev_end < len {
        let end = (begin + n_ctx).min(len);
        out.push(Window {
            start: begin,
            end: end - 1,
            targets: end - prev_end,
        });
        prev_end = end;
        begin += stride;
    }
    out
}

impl<'m> Scorer<'m> {
    pub fn new(model: &'m Model) -> Scorer<'m> {
        Scorer {
            model,
            cache: KvCache::new(model.config(), 0, 0),
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
        windowing: Windowing,
        top_n: usize,
    ) -> Result<Vec<TokenScore>> {
        let mut one = self.score_texts(&[tokens], windowing, top_n, &mut |_| {})?;
        Ok(one.pop().unwrap_or_default())
    }

    /// Scores many texts in `windowing`'s windows, the windows of all of
    /// them sharing forward passes; one score list per text, in order.
    /// `progress` hears the number of tokens each batch scored.
    pub fn score_texts<T: AsRef<[u32]>>(
        &mut self,
        texts: &[T],
        windowing: Windowing,
        top_n: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<TokenScore>>> {
        let mut spans = Vec::new();
        let mut owner = Vec::new();
        for (i, tokens) in texts.iter().enumerate() {
            let s = self.text_spans(tokens.as_ref(), windowing)?;
            owner.extend(std::iter::repeat_n(i, s.len()));
            spans.extend(s);
        }
        let scored = self.score_spans(&spans, top_n, progress)?;
        let mut out = vec![Vec::new(); texts.len()];
        for (i, s) in owner.into_iter().zip(scored) {
            out[i].extend(s);
        }
        Ok(out)
    }

    /// The spans that score every token of `tokens` once, the first one
    /// conditioned on the prefix token.
    pub fn text_spans(&self, tokens: &[u32], windowing: Windowing) -> Result<Vec<Span>> {
        let mut seq = Vec::with_capacity(tokens.len() + 1);
        seq.push(self.prefix);
        seq.extend_from_slice(tokens);
        let n_ctx = self.model.config().n_ctx;
        let restart = matches!(windowing, Windowing::LlamaPerplexity { .. });
        Ok(windows(tokens.len(), n_ctx, windowing)?
            .into_iter()
            .map(|w| {
                let mut input = seq[w.start..w.end].to_vec();
                if restart {
                    input[0] = self.prefix;
                }
                Span {
                    input,
                    targets: seq[w.end + 1 - w.targets..=w.end].to_vec(),
                }
            })
            .collect())
    }

    /// Scores each span's targets, in order, batching spans into shared
    /// forward passes; `progress` hears the number of targets each batch
    /// scored.
    pub fn score_spans(
        &mut self,
        spans: &[Span],
        top_n: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<TokenScore>>> {
        let n_ctx = self.model.config().n_ctx;
        for (i, s) in spans.iter().enumerate() {
            if s.input.len() > n_ctx || s.targets.is_empty() || s.targets.len() > s.input.len() {
                return Err(ModelError::InvalidRequest(format!(
                    "span {i}: {} inputs and {} targets (inputs must fit the context of \
                     {n_ctx} and hold at least one position per target)",
                    s.input.len(),
                    s.targets.len()
                )));
            }
        }
        let mut out = Vec::with_capacity(spans.len());
        let mut rest = spans;
        while !rest.is_empty() {
            let take = batch_len(rest);
            let batch = &rest[..take];
            self.score_batch(batch, top_n, &mut out)?;
            progress(batch.iter().map(|s| s.targets.len()).sum());
            rest = &rest[take..];
        }
        Ok(out)
    }

    /// The raw logits of a span's scored positions, `[targets, vocab]` (for
    /// statistics that need whole distributions, such as Binoculars').
    pub fn span_logits(&mut self, span: &Span) -> Result<Vec<f32>> {
        let n_ctx = self.model.config().n_ctx;
        if span.input.len() > n_ctx || span.targets.len() > span.input.len() {
            return Err(ModelError::InvalidRequest(format!(
                "a span of {} inputs and {} targets does not fit the context of {n_ctx}",
                span.input.len(),
                span.targets.len()
            )));
        }
        if self.cache.slots() < 1 || self.cache.capacity() < span.input.len() {
            self.cache = KvCache::new(self.model.config(), 1, n_ctx);
        }
        self.cache.reset_all();
        let batch = Batch::single(0, &span.input);
        self.model
            .forward(&batch, &mut self.cache, &mut self.scratch, Output::All)?;
        let (c, v) = (self.model.config().n_embd, self.model.config().vocab_size);
        let first = span.input.len() - span.targets.len();
        let hidden = &self.scratch.hidden(c)[first * c..span.input.len() * c];
        let mut logits = vec![0f32; span.targets.len() * v];
        self.model.lm_head(hidden, span.targets.len(), &mut logits);
        Ok(logits)
    }

    fn score_batch(
        &mut self,
        batch: &[Span],
        top_n: usize,
        out: &mut Vec<Vec<TokenScore>>,
    ) -> Result<()> {
        let longest = batch.iter().map(|s| s.input.len()).max().unwrap_or(0);
        if self.cache.slots() < batch.len() || self.cache.capacity() < longest {
            self.cache = KvCache::new(self.model.config(), batch.len(), longest);
        }
        let mut segments = Batch::default();
        for (slot, s) in batch.iter().enumerate() {
            segments.push(slot, &s.input);
        }
        self.cache.reset_all();
        self.model
            .forward(&segments, &mut self.cache, &mut self.scratch, Output::All)?;
        // (hidden row, target token, span) of every scored position.
        let mut rows = Vec::new();
        let mut row0 = 0;
        for (i, s) in batch.iter().enumerate() {
            let len = s.input.len();
            let first = row0 + len - s.targets.len();
            rows.extend(
                s.targets
                    .iter()
                    .enumerate()
                    .map(|(k, &t)| (first + k, t, i)),
            );
            row0 += len;
        }
        let first_span = out.len();
        out.extend(batch.iter().map(|s| Vec::with_capacity(s.targets.len())));
        let (c, v) = (self.model.config().n_embd, self.model.config().vocab_size);
        for chunk in rows.chunks(LOGIT_CHUNK_ROWS) {
            let hidden = self.scratch.hidden(c);
            let mut h = Vec::with_capacity(chunk.len() * c);
            for &(row, _, _) in chunk {
                h.extend_from_slice(&hidden[row * c..(row + 1) * c]);
            }
            if self.logits.len() < chunk.len() * v {
                self.logits.resize(chunk.len() * v, 0.0);
            }
            self.model.lm_head(&h, chunk.len(), &mut self.logits);
            let scores: Vec<TokenScore> = self.logits[..chunk.len() * v]
                .par_chunks(v)
                .zip(chunk.par_iter())
                .map_init(
                    || vec![0f32; v],
                    |work, (logits, &(_, target, _))| score_row(logits, target, top_n, work),
                )
                .collect();
            for (score, &(_, _, span)) in scores.into_iter().zip(chunk) {
                out[first_span + span].push(score);
            }
        }
        Ok(())
    }
}

/// As many spans as fit the row and cache budgets (at least one).
fn batch_len(spans: &[Span]) -> usize {
    let (mut rows, mut longest) = (0, 0);
    for (n, s) in spans.iter().enumerate() {
        rows += s.input.len();
        longest = longest.max(s.input.len());
        if n > 0 && (rows > MAX_BATCH_ROWS || (n + 1) * longest > MAX_BATCH_CELLS) {
            return n;
        }
    }
    spans.len()
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
    let tied_before = logits[..target as usize].contains(&t);
    TokenScore {
        id: target,
        logprob: t - max - lse,
        rank,
        entropy,
        logprob_variance: logprob_variance(logits, work, max + lse, -entropy),
        is_argmax: rank == 1 && !tied_before,
        top: top_k(logits, top_n)
            .into_iter()
            .map(|i| (i, logits[i as usize] - max - lse))
            .collect(),
    }
}

/// E[(log p - mean)^2] under p, with `work` = exp(l - max) (unnormalised)
/// and `log_z` = max + lse; in f64, since the terms nearly cancel for
/// peaked distributions.
fn logprob_variance(logits: &[f32], work: &[f32], log_z: f32, mean: f32) -> f32 {
    let (mut total, mut sum) = (0f64, 0f64);
    for (&w, &l) in work.iter().zip(logits) {
        let d = (l - log_z - mean) as f64;
        total += w as f64 * d * d;
        sum += w as f64;
    }
    (total / sum) as f32
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

    fn coverage(ws: &[Window]) -> Vec<usize> {
        ws.iter()
            .flat_map(|w| w.end + 1 - w.targets..=w.end)
            .collect()
    }

    #[test]
    fn windows_cover_every_target_once() {
        for (n, ctx) in [(1, 4), (4, 4), (5, 4), (11, 4), (3, 8), (100, 16)] {
            let mut modes = vec![Windowing::Rolling];
            modes.extend((1..ctx).map(|stride| Windowing::Sliding { stride }));
            for mode in modes {
                let ws = windows(n, ctx, mode).unwrap();
                for w in &ws {
                    assert!(w.end - w.start <= ctx && w.targets <= w.end - w.start);
                }
                assert_eq!(coverage(&ws), (1..=n).collect::<Vec<_>>(), "n={n} {mode:?}");
            }
        }
        assert!(windows(5, 4, Windowing::Sliding { stride: 0 }).is_err());
        assert!(windows(5, 4, Windowing::Sliding { stride: 4 }).is_err());
        assert!(windows(0, 4, Windowing::Rolling).unwrap().is_empty());
    }

    fn w(start: usize, end: usize, targets: usize) -> Window {
        Window {
            start,
            end,
            targets,
        }
    }

    #[test]
    fn lm_eval_rolling_windows() {
        // lm-eval, max_seq_len 4: ([EOT] t0 t1 t2 -> t0..t3), (t3..t6 -> t4..t7),
        // then the last window filled with context: (t5..t8 -> t8 t9).
        assert_eq!(
            windows(10, 4, Windowing::Rolling).unwrap(),
            vec![w(0, 4, 4), w(4, 8, 4), w(6, 10, 2)]
        );
    }

    #[test]
    fn hugging_face_sliding_windows() {
        // seq = [EOT] + 10 tokens, max_length 4, stride 2: begin 0, 2, 4, 6, 8;
        // the last window is shorter than the context, as in HF's loop.
        assert_eq!(
            windows(10, 4, Windowing::Sliding { stride: 2 }).unwrap(),
            vec![w(0, 3, 3), w(2, 5, 2), w(4, 7, 2), w(6, 9, 2), w(8, 10, 1)]
        );
    }

    #[test]
    fn llama_perplexity_chunks() {
        // seq = [EOT] + 12 tokens, -c 6: chunks seq[0..6] and seq[6..12]
        // (seq[12] dropped); each feeds 5 inputs and scores its last
        // 6 - 1 - 3 = 2 positions.
        assert_eq!(
            windows(12, 8, Windowing::LlamaPerplexity { ctx: 6 }).unwrap(),
            vec![w(0, 5, 2), w(6, 11, 2)]
        );
        assert!(windows(10, 8, Windowing::LlamaPerplexity { ctx: 6 }).is_err());
        assert!(windows(100, 8, Windowing::LlamaPerplexity { ctx: 9 }).is_err());
    }

    #[test]
    fn row_statistics() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let mut work = [0.0; 4];
        let s = score_row(&logits, 2, 2, &mut work);
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        assert!((s.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(s.rank, 3);
        assert!(!s.is_argmax);
        // Tied for the maximum: the lower id is the argmax, as in torch.
        assert!(score_row(&logits, 1, 0, &mut work).is_argmax);
        assert!(!score_row(&logits, 3, 0, &mut work).is_argmax);
        let h: f64 = logits
            .iter()
            .map(|&l| {
                let p = (l as f64).exp() / z;
                -p * p.ln()
            })
            .sum();
        assert!((s.entropy as f64 - h).abs() < 1e-5);
        let var: f64 = logits
            .iter()
            .map(|&l| {
                let lp = l as f64 - z.ln();
                lp.exp() * (lp + h).powi(2)
            })
            .sum();
        assert!((s.logprob_variance as f64 - var).abs() < 1e-5);
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
    }
}
