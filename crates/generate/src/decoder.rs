//! The batch decoder: a fixed number of KV-cache slots, each holding one
//! sequence; sequences join and leave between steps, and one step is one
//! forward pass over every active sequence (a joining prompt's prefill
//! rides in the same pass as the others' next tokens), so 16 decoding
//! sequences cost one matrix product per weight, not 16 matrix-vector
//! products. Sampling, stop strings, UTF-8 hold-back and the watermark are
//! per sequence and run in parallel after the pass.
//!
//! `gpt2 generate -n`, `gpt2 serve`, `gpt2 eval lambada-word` and
//! `gpt2 bench` all drive this one loop: the per-token logic exists once.

use crate::adjust::LogitAdjust;
use crate::sampling::{Sampler, SamplingParams, Watermark};
use crate::stop::{final_len, find_stop};
use crate::utf8::Utf8Stream;
use crate::{Completion, FinishReason, GenerateError};
use gpt2_model::kernels::simd;
use gpt2_model::score::top_k;
use gpt2_model::{Batch, KvCache, Model, Scratch, Tokenizer, END_OF_TEXT};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// How one sequence is sampled.
#[derive(Clone)]
pub struct SeqSpec {
    /// The caller's name for the sequence, carried by its events.
    pub tag: u64,
    /// At least 1.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// The ChaCha8 seed and stream of the sequence's draws: the same pair
    /// gives the same text alone or inside any batch.
    pub seed: u64,
    pub stream: u64,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Arc<[String]>,
    /// Alternatives reported with each token (0: none).
    pub top_logprobs: usize,
    pub watermark: Option<Arc<dyn Watermark>>,
    /// `logit_bias` and the presence and frequency penalties.
    pub adjust: LogitAdjust,
    /// `<|endoftext|>` is an ordinary token (benchmarks: a fixed amount of
    /// work whatever the model writes).
    pub ignore_eos: bool,
}

/// A generated token with its log-probability and the most likely
/// alternatives, both under the distribution the sampler draws from: the
/// model's logits after the sequence's `adjust`, plus the watermark's bias
/// where there is one (before temperature and filtering). Text assembled from the alternatives is
/// therefore as watermarked as text the sampler writes.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What a step tells the caller about one sequence.
#[derive(Debug)]
pub enum Event<'a> {
    /// A token was generated; `text` is the text that became final with it
    /// (possibly empty: a stop string's start or half a character is held
    /// back until it is decided).
    Token {
        tag: u64,
        token: &'a TokenOut,
        text: &'a str,
    },
    /// The sequence is finished and has left its slot; `text` is the last
    /// of its final text (possibly empty).
    Done {
        tag: u64,
        text: &'a str,
        completion: Completion,
    },
}

/// The size of one step's forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    pub sequences: usize,
    pub rows: usize,
}

enum Phase {
    /// Waiting for its prompt's prefill, shared with the other sequences
    /// of the same `group` that joined with it.
    Prefill { group: u64 },
    /// The token to feed next.
    Decode(u32),
}

struct Seq {
    spec: SeqSpec,
    slot: usize,
    sampler: Sampler,
    /// Prompt then generated tokens: what the watermark sees.
    history: Vec<u32>,
    prompt_len: usize,
    logprobs: Vec<f32>,
    utf8: Utf8Stream,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    max_stop: usize,
    phase: Phase,
    /// This step's token (None after `<|endoftext|>`).
    out: Option<TokenOut>,
    /// Scratch for the watermarked logits of a reported token.
    biased: Vec<f32>,
    /// The logits after `spec.adjust`, and the generated tokens' counts it
    /// needs.
    adjusted: Vec<f32>,
    counts: HashMap<u32, u32>,
    finish: Option<FinishReason>,
}

pub struct Decoder<'m> {
    model: &'m Model,
    tokenizer: Tokenizer,
    cache: KvCache,
    scratch: Scratch,
    batch: Batch,
    free: Vec<usize>,
    seqs: Vec<Seq>,
    rows: Vec<usize>,
    /// (from, to) slots: this step's followers copy their group's prefill.
    copies: Vec<(usize, usize)>,
    next_group: u64,
}

impl<'m> Decoder<'m> {
    /// A decoder of `slots` sequences of up to the model's full context.
    pub fn new(model: &'m Model, slots: usize) -> Decoder<'m> {
        Decoder::with_capacity(model, slots, model.config().n_ctx)
    }

    /// As [`Decoder::new`], with every slot holding at most `capacity`
    /// positions (prompt and generated tokens).
    pub fn with_capacity(model: &'m Model, slots: usize, capacity: usize) -> Decoder<'m> {
        let capacity = capacity.clamp(1, model.config().n_ctx);
        Decoder {
            model,
            tokenizer: Tokenizer::gpt2(),
            cache: KvCache::new(model.config(), slots, capacity),
            scratch: Scratch::default(),
            batch: Batch::default(),
            free: (0..slots).rev().collect(),
            seqs: Vec::with_capacity(slots),
            rows: Vec::with_capacity(slots),
            copies: Vec::new(),
            next_group: 0,
        }
    }

    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Positions a slot holds; a prompt must be shorter.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Adds sequences that continue `prompt` (token ids, non-empty and
    /// shorter than the capacity). The prompt is prefilled once, in the
    /// next step, and copied to every sequence's slot.
    pub fn join(&mut self, prompt: &[u32], specs: Vec<SeqSpec>) -> Result<(), GenerateError> {
        let invalid = |m: String| Err(GenerateError::Invalid(m));
        if specs.len() > self.free.len() {
            return invalid(format!(
                "{} sequences asked for, {} slots free",
                specs.len(),
                self.free.len()
            ));
        }
        if prompt.is_empty() || prompt.len() >= self.capacity() {
            return invalid(format!(
                "a prompt must have 1 to {} tokens, got {}",
                self.capacity() - 1,
                prompt.len()
            ));
        }
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            ));
        }
        for spec in &specs {
            spec.sampling.validate().map_err(GenerateError::Invalid)?;
            if spec.max_tokens == 0 {
                return invalid("max_tokens must be at least 1".into());
            }
        }
        let group = self.next_group;
        self.next_group += 1;
        for spec in specs {
            let slot = self.free.pop().expect("invariant: checked above");
            self.cache.reset(slot);
            let mut sampler = Sampler::new(spec.sampling, spec.seed, spec.stream, vocab);
            sampler.observe(prompt);
            let mut history = Vec::with_capacity(prompt.len() + spec.max_tokens);
            history.extend_from_slice(prompt);
            self.seqs.push(Seq {
                max_stop: spec.stop.iter().map(|s| s.len()).max().unwrap_or(0),
                logprobs: Vec::with_capacity(spec.max_tokens),
                spec,
                slot,
                sampler,
                history,
                prompt_len: prompt.len(),
                utf8: Utf8Stream::default(),
                text: String::new(),
                emitted: 0,
                phase: Phase::Prefill { group },
                out: None,
                biased: Vec::new(),
                adjusted: Vec::new(),
                counts: HashMap::new(),
                finish: None,
            });
        }
        Ok(())
    }

    /// Drops every sequence `keep` refuses (their consumers are gone),
    /// freeing their slots before the next step; returns how many tokens
    /// each dropped one had generated, by tag.
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) -> Vec<(u64, usize)> {
        let mut dropped = Vec::new();
        let free = &mut self.free;
        self.seqs.retain(|s| {
            let k = keep(s.spec.tag);
            if !k {
                free.push(s.slot);
                dropped.push((s.spec.tag, s.history.len() - s.prompt_len));
            }
            k
        });
        dropped
    }

    /// One forward pass over every sequence, then one new token for each;
    /// `on_event` hears of each token and each finished sequence.
    pub fn step(
        &mut self,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<StepStats, GenerateError> {
        if self.seqs.is_empty() {
            return Ok(StepStats::default());
        }
        self.build_batch();
        let stats = StepStats {
            sequences: self.batch.len(),
            rows: self.batch.rows(),
        };
        let logits =
            self.model
                .next_token_logits(&self.batch, &mut self.cache, &mut self.scratch)?;
        let vocab = self.model.config().vocab_size;
        for &(from, to) in &self.copies {
            self.cache.copy_slot(from, to);
        }
        let drawable = self.tokenizer.vocab_size().min(vocab);
        let capacity = self.cache.capacity();
        let tokenizer = &self.tokenizer;
        self.seqs
            .par_iter_mut()
            .zip(&self.rows)
            .for_each(|(s, &row)| {
                let raw = &logits[row * vocab..(row + 1) * vocab];
                s.advance(raw, drawable, tokenizer, capacity);
            });
        self.report(on_event);
        Ok(stats)
    }

    /// Lays out the step's batch: one token per decoding sequence, each
    /// group's prompt once (in its first sequence's slot, which the others
    /// copy after the pass); `rows[i]` is the logits row of `seqs[i]`.
    fn build_batch(&mut self) {
        self.batch.clear();
        self.rows.clear();
        self.copies.clear();
        for i in 0..self.seqs.len() {
            let s = &self.seqs[i];
            let row = match s.phase {
                Phase::Decode(t) => {
                    self.batch.push(s.slot, std::slice::from_ref(&t));
                    self.batch.len() - 1
                }
                Phase::Prefill { group } => {
                    let leader = self.seqs[..i].iter().zip(&self.rows).find(
                        |(o, _)| matches!(o.phase, Phase::Prefill { group: g } if g == group),
                    );
                    match leader {
                        Some((o, &r)) => {
                            self.copies.push((o.slot, s.slot));
                            r
                        }
                        None => {
                            self.batch.push(s.slot, &s.history[..s.prompt_len]);
                            self.batch.len() - 1
                        }
                    }
                }
            };
            self.rows.push(row);
        }
    }

    /// Hands out each sequence's token and final text, and retires the
    /// finished ones.
    fn report(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        let mut i = 0;
        while i < self.seqs.len() {
            let s = &mut self.seqs[i];
            let end = final_len(&s.text, s.finish.is_some(), s.max_stop, &s.spec.stop);
            // Text already handed out is never cut (a stop string's start is
            // always held back), so `emitted <= end`; `get` keeps a mistake
            // here from becoming a panic.
            let piece = s.text.get(s.emitted..end).unwrap_or_default();
            let mut sent = false;
            if let Some(token) = &s.out {
                on_event(Event::Token {
                    tag: s.spec.tag,
                    token,
                    text: piece,
                });
                sent = true;
            }
            s.emitted = end.max(s.emitted);
            if s.finish.is_none() {
                i += 1;
                continue;
            }
            let rest = if sent {
                String::new()
            } else {
                piece.to_string()
            };
            let s = self.seqs.swap_remove(i);
            self.free.push(s.slot);
            on_event(Event::Done {
                tag: s.spec.tag,
                text: &rest,
                completion: Completion {
                    tokens: s.history[s.prompt_len..].to_vec(),
                    logprobs: s.logprobs,
                    text: s.text,
                    finish_reason: s.finish.unwrap_or(FinishReason::Length),
                },
            });
        }
    }
}

impl Seq {
    /// Samples this step's token from the sequence's row of logits and
    /// decides whether the sequence is finished: at `<|endoftext|>`, a stop
    /// string, `max_tokens`, or a full slot.
    fn advance(&mut self, raw: &[f32], drawable: usize, tokenizer: &Tokenizer, capacity: usize) {
        let mut adjusted = std::mem::take(&mut self.adjusted);
        let logits = if self.spec.adjust.is_none() {
            raw
        } else {
            adjusted.clear();
            adjusted.extend_from_slice(raw);
            self.spec.adjust.apply(&mut adjusted, &self.counts);
            &adjusted[..]
        };
        let pick = self.sampler.pick(
            logits,
            drawable,
            &self.history,
            self.spec.watermark.as_deref(),
        );
        let ends = pick.token == END_OF_TEXT && !self.spec.ignore_eos;
        self.out = (!ends).then(|| self.token_out(logits, pick));
        self.adjusted = adjusted;
        if ends {
            self.utf8.finish(&mut self.text);
            self.finish = Some(FinishReason::Stop);
            return;
        }
        *self.counts.entry(pick.token).or_default() += 1;
        self.history.push(pick.token);
        self.logprobs.push(pick.logprob);
        self.sampler.observe(std::slice::from_ref(&pick.token));
        self.phase = Phase::Decode(pick.token);
        let before = self.text.len();
        self.utf8.push(
            tokenizer.token_bytes(pick.token).unwrap_or_default(),
            &mut self.text,
        );
        let from = before.saturating_sub(self.max_stop);
        if let Some(cut) = find_stop(&self.text, from, &self.spec.stop) {
            self.text.truncate(cut);
            self.finish = Some(FinishReason::Stop);
            return;
        }
        let generated = self.history.len() - self.prompt_len;
        if generated >= self.spec.max_tokens || self.history.len() >= capacity {
            self.utf8.finish(&mut self.text);
            self.finish = Some(FinishReason::Length);
        }
    }

    /// The token as reported to the caller. Without alternatives, or
    /// without a biasing watermark, that is the model's own numbers; with
    /// both, the log-probabilities of the biased logits, so that the
    /// alternatives reveal nothing the sampler does not draw from.
    fn token_out(&mut self, raw: &[f32], pick: crate::sampling::Pick) -> TokenOut {
        let k = self.spec.top_logprobs;
        let wm = self
            .spec
            .watermark
            .as_deref()
            .filter(|w| w.max_bias() > 0.0);
        let (Some(wm), true) = (wm, k > 0) else {
            let lse = pick_lse(raw, pick);
            let top = match k {
                0 => Vec::new(),
                _ => top_k(raw, k)
                    .into_iter()
                    .map(|i| (i, raw[i as usize] - lse))
                    .collect(),
            };
            return TokenOut {
                id: pick.token,
                logprob: pick.logprob,
                top,
            };
        };
        self.biased.clear();
        self.biased.extend_from_slice(raw);
        wm.bias(
            &self.history,
            crate::sampling::Tokens::All,
            &mut self.biased,
        );
        let b = &mut self.biased;
        let picked = b[pick.token as usize];
        let top: Vec<(u32, f32)> = top_k(b, k)
            .into_iter()
            .map(|i| (i, b[i as usize]))
            .collect();
        // The biased logits are not needed past here: their exps are summed
        // in place, as the sampler's log-softmax does.
        let max = simd::max(b);
        let lse = max + simd::exp_shifted_sum(b, max).ln();
        TokenOut {
            id: pick.token,
            logprob: picked - lse,
            top: top.into_iter().map(|(i, l)| (i, l - lse)).collect(),
        }
    }
}

/// max + log-sum-exp of `raw`, recovered from a pick's log-probability.
fn pick_lse(raw: &[f32], pick: crate::sampling::Pick) -> f32 {
    raw[pick.token as usize] - pick.logprob
}
