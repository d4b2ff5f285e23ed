//! gpt2-eval: the GPT-2 paper's zero-shot evaluation (Radford et al. 2019,
//! Table 3) with lm-evaluation-harness's definitions, which is how GPT-2 is
//! measured today.
//!
//! - [`lambada`]: `lambada_openai` (accuracy and perplexity of the last
//!   word) and a word-level variant closer to the paper's.
//! - [`rolling`]: WikiText (word and byte perplexity, bits per byte), the
//!   Penn Treebank, bits per byte/character of any file, and perplexity.
//! - [`detokenize`]: the invertible detokenizers (lm-eval's for WikiText,
//!   Megatron-LM's for PTB).
//! - [`report`]: Markdown tables and lm-eval-shaped JSON.

pub mod data;
pub mod detokenize;
pub mod error;
pub mod lambada;
pub mod metrics;
pub mod report;
pub mod rolling;

pub use error::{EvalError, Result};
pub use report::{Metric, TaskResult};

/// Hears how far a long evaluation has come (a progress bar, or nothing).
pub trait Progress {
    fn start(&mut self, _total: usize, _unit: &str) {}
    fn advance(&mut self, _n: usize) {}
    fn finish(&mut self) {}
}

/// No progress reporting.
impl Progress for () {}
