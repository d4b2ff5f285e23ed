//! gpt2-generate: sampling text from a GPT-2 model.
//!
//! One loop, [`Decoder`]: sequences in cache slots, joining and leaving
//! between steps, one forward pass per step for all of them; a prompt
//! shared by several samples is prefilled once and copied. Text is streamed
//! out as whole UTF-8 characters, holding back anything that could still
//! become a stop string. [`Generator`] drives it for one prompt.

pub mod adjust;
pub mod decoder;
pub mod sampling;
pub mod stop;
pub mod utf8;

pub use adjust::LogitAdjust;
pub use decoder::{Decoder, Event, SeqSpec, StepStats, TokenOut};
pub use sampling::{Pick, Sampler, SamplingParams, Tokens, Watermark};

use gpt2_model::{Model, ModelError, END_OF_TEXT};
use std::sync::Arc;

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
    /// `logit_bias` and the presence and frequency penalties.
    pub adjust: LogitAdjust,
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

impl Completion {
    fn empty(finish_reason: FinishReason) -> Completion {
        Completion {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            text: String::new(),
            finish_reason,
        }
    }
}

/// Samples completions of one prompt: the CLI's loop, a thin driver of
/// the [`Decoder`] (sample `i` is the decoder's sequence `i`, drawing from
/// ChaCha8 stream `i`).
pub struct Generator<'m> {
    model: &'m Model,
    watermark: Option<Arc<dyn Watermark>>,
}

impl<'m> Generator<'m> {
    pub fn new(model: &'m Model) -> Generator<'m> {
        Generator {
            model,
            watermark: None,
        }
    }

    /// Watermarks every sample with `w`.
    pub fn set_watermark(&mut self, w: Arc<dyn Watermark>) {
        self.watermark = Some(w);
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
        if opts.max_tokens == 0 {
            return Ok(vec![Completion::empty(FinishReason::Length); opts.n]);
        }
        let stop: Arc<[String]> = opts.stop.clone().into();
        let specs = (0..opts.n)
            .map(|i| SeqSpec {
                tag: i as u64,
                max_tokens: opts.max_tokens,
                sampling: opts.sampling,
                seed: opts.seed,
                stream: i as u64,
                stop: stop.clone(),
                top_logprobs: 0,
                watermark: self.watermark.clone(),
                adjust: opts.adjust.clone(),
                ignore_eos: false,
            })
            .collect();
        let mut decoder = Decoder::new(self.model, opts.n);
        decoder.join(&prompt, specs)?;
        let mut done: Vec<Option<Completion>> = vec![None; opts.n];
        while !decoder.is_idle() {
            decoder.step(&mut |e| match e {
                Event::Token { tag, text, .. } if !text.is_empty() => on_text(tag as usize, text),
                Event::Token { .. } => {}
                Event::Done {
                    tag,
                    text,
                    completion,
                } => {
                    if !text.is_empty() {
                        on_text(tag as usize, text);
                    }
                    done[tag as usize] = Some(completion);
                }
            })?;
        }
        Ok(done
            .into_iter()
            .map(|c| c.unwrap_or_else(|| Completion::empty(FinishReason::Length)))
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
}
