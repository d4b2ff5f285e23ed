//! gpt2-generate: sampling text from a GPT-2 model.
//!
//! The loop: the prompt goes through the model in one batched pass; each
//! sample then gets its own cache slot (a copy of the prompt's) and all
//! samples decode together, one token per step, in one batch. Text is
//! streamed out as whole UTF-8 characters, holding back anything that could
//! still become a stop string.

pub mod sampling;
pub mod stop;
pub mod utf8;

pub use sampling::{LogitsProcessor, Sampler, SamplingParams, TokenChooser};

use gpt2_model::kernels::log_softmax_stats;
use gpt2_model::{Batch, KvCache, Model, ModelError, Scratch, Tokenizer, END_OF_TEXT};
use stop::{final_len, find_stop};
use utf8::Utf8Stream;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Invalid(String),
}

/// What to do with a prompt that does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncate {
    /// Refuse it.
    #[default]
    Error,
    /// Keep its end, leaving room for the new tokens.
    Left,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Number of independent samples.
    pub n: usize,
    pub truncate: Truncate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `<|endoftext|>` or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Completion {
    /// Generated token ids (without the prompt, the end-of-text token, or
    /// tokens past a stop string).
    pub tokens: Vec<u32>,
    /// Log-probability of each generated token under the model's own
    /// distribution (before temperature and filtering).
    pub logprobs: Vec<f32>,
    pub text: String,
    pub finish_reason: FinishReason,
}

/// One sample in flight.
struct Sample {
    sampler: Sampler,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    utf8: Utf8Stream,
    text: String,
    /// Bytes of `text` already handed to the caller.
    emitted: usize,
    finish: Option<FinishReason>,
}

pub struct Generator<'m> {
    model: &'m Model,
    tokenizer: Tokenizer,
    cache: KvCache,
    scratch: Scratch,
    batch: Batch,
    work: Vec<f32>,
    processors: Vec<Box<dyn LogitsProcessor + 'm>>,
    chooser: Option<Box<dyn TokenChooser + 'm>>,
}

impl<'m> Generator<'m> {
    pub fn new(model: &'m Model) -> Generator<'m> {
        Generator {
            model,
            tokenizer: Tokenizer::gpt2(),
            cache: model.new_cache(1),
            scratch: Scratch::default(),
            batch: Batch::default(),
            work: vec![0.0; model.config().vocab_size],
            processors: Vec::new(),
            chooser: None,
        }
    }

    /// Adds a logits processor, applied to every sample before sampling.
    pub fn add_processor(&mut self, p: Box<dyn LogitsProcessor + 'm>) {
        self.processors.push(p);
    }

    /// Lets `c` make every sample's final draw (see [`TokenChooser`]).
    pub fn set_chooser(&mut self, c: Box<dyn TokenChooser + 'm>) {
        self.chooser = Some(c);
    }

    /// Generates `opts.n` completions of `prompt` (token ids; empty means
    /// unconditional, starting from `<|endoftext|>`). `on_text(i, s)` gets
    /// each piece of sample `i`'s text as soon as it is final.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<Completion>, GenerateError> {
        opts.sampling.validate().map_err(GenerateError::Invalid)?;
        if opts.n == 0 {
            return Err(GenerateError::Invalid(
                "the number of samples must be at least 1".into(),
            ));
        }
        let prompt = self.fit_prompt(prompt, opts)?;
        let vocab = self.model.config().vocab_size;
        if self.cache.slots() < opts.n {
            self.cache = self.model.new_cache(opts.n);
        }
        self.cache.reset_all();
        let mut samples: Vec<Sample> = (0..opts.n)
            .map(|i| {
                let mut sampler = Sampler::new(opts.sampling, opts.seed, i as u64, vocab);
                sampler.observe(&prompt);
                Sample {
                    sampler,
                    tokens: Vec::with_capacity(opts.max_tokens),
                    logprobs: Vec::with_capacity(opts.max_tokens),
                    utf8: Utf8Stream::default(),
                    text: String::new(),
                    emitted: 0,
                    finish: (opts.max_tokens == 0).then_some(FinishReason::Length),
                }
            })
            .collect();
        let mut history = prompt.clone();
        let max_stop = opts.stop.iter().map(|s| s.len()).max().unwrap_or(0);

        // The prompt once; each sample's slot starts from a copy of it.
        self.batch.clear();
        self.batch.push(0, &prompt);
        let mut logits = self
            .model
            .next_token_logits(&self.batch, &mut self.cache, &mut self.scratch)?
            .to_vec();
        for i in 1..opts.n {
            self.cache.copy_slot(0, i);
            logits.extend_from_within(..vocab);
        }
        let mut active: Vec<usize> = (0..opts.n)
            .filter(|&i| samples[i].finish.is_none())
            .collect();
        while !active.is_empty() {
            self.batch.clear();
            for (row, &i) in active.iter().enumerate() {
                let s = &mut samples[i];
                history.truncate(prompt.len());
                history.extend_from_slice(&s.tokens);
                let token = self.pick(&logits[row * vocab..(row + 1) * vocab], s, &history);
                self.accept(s, token, opts, max_stop, prompt.len());
                emit(i, s, max_stop, &opts.stop, on_text);
                if s.finish.is_none() {
                    self.batch.push(i, std::slice::from_ref(&token));
                }
            }
            active.retain(|&i| samples[i].finish.is_none());
            if active.is_empty() {
                break;
            }
            let rows =
                self.model
                    .next_token_logits(&self.batch, &mut self.cache, &mut self.scratch)?;
            logits.clear();
            logits.extend_from_slice(rows);
        }
        Ok(samples
            .into_iter()
            .map(|s| Completion {
                tokens: s.tokens,
                logprobs: s.logprobs,
                text: s.text,
                finish_reason: s.finish.unwrap_or(FinishReason::Length),
            })
            .collect())
    }

    /// The prompt as fed: `<|endoftext|>` when empty, cut on the left when
    /// asked and it does not fit, an error when it does not fit otherwise.
    fn fit_prompt(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Vec<u32>, GenerateError> {
        let n_ctx = self.model.config().n_ctx;
        if prompt.is_empty() {
            return Ok(vec![END_OF_TEXT]);
        }
        if prompt.len() < n_ctx {
            return Ok(prompt.to_vec());
        }
        match opts.truncate {
            Truncate::Error => Err(GenerateError::Invalid(format!(
                "the prompt has {} tokens and leaves no room in the context of {n_ctx}; shorten it or truncate it on the left",
                prompt.len()
            ))),
            Truncate::Left => {
                let room = opts.max_tokens.clamp(1, n_ctx / 2);
                Ok(prompt[prompt.len() - (n_ctx - room)..].to_vec())
            }
        }
    }

    /// Samples the next token of `s` and records its model log-probability.
    fn pick(&mut self, raw: &[f32], s: &mut Sample, history: &[u32]) -> u32 {
        let (max, lse) = log_softmax_stats(raw, &mut self.work);
        self.work.copy_from_slice(raw);
        for p in &mut self.processors {
            p.process(history, &mut self.work);
        }
        // Ids the tokenizer cannot decode (padded vocabularies) are never drawn.
        if self.work.len() > self.tokenizer.vocab_size() {
            self.work[self.tokenizer.vocab_size()..].fill(f32::NEG_INFINITY);
        }
        let token = match &mut self.chooser {
            Some(c) => s
                .sampler
                .sample_choosing(&mut self.work, &mut |cands, w| c.choose(history, cands, w)),
            None => s.sampler.sample(&mut self.work),
        };
        s.logprobs.push(raw[token as usize] - max - lse);
        token
    }

    fn accept(
        &self,
        s: &mut Sample,
        token: u32,
        opts: &GenerateOptions,
        max_stop: usize,
        prompt_len: usize,
    ) {
        if token == END_OF_TEXT {
            s.logprobs.pop();
            s.utf8.finish(&mut s.text);
            s.finish = Some(FinishReason::Stop);
            return;
        }
        s.tokens.push(token);
        s.sampler.observe(std::slice::from_ref(&token));
        let before = s.text.len();
        s.utf8.push(
            self.tokenizer.token_bytes(token).unwrap_or_default(),
            &mut s.text,
        );
        if let Some(cut) = find_stop(&s.text, before.saturating_sub(max_stop), &opts.stop) {
            s.text.truncate(cut);
            s.finish = Some(FinishReason::Stop);
            return;
        }
        if s.tokens.len() >= opts.max_tokens
            || prompt_len + s.tokens.len() >= self.model.config().n_ctx
        {
            s.utf8.finish(&mut s.text);
            s.finish = Some(FinishReason::Length);
        }
    }
}

/// Hands the caller what is final: all of a finished sample's text, else
/// everything but a tail that could still grow into a stop string.
fn emit(
    i: usize,
    s: &mut Sample,
    max_stop: usize,
    stops: &[String],
    on_text: &mut dyn FnMut(usize, &str),
) {
    let end = final_len(&s.text, s.finish.is_some(), max_stop, stops);
    if end > s.emitted {
        on_text(i, &s.text[s.emitted..end]);
        s.emitted = end;
    }
}
