//! Tasks that score whole documents: WikiText, the Penn Treebank, bits per
//! byte of any file, and the perplexity of any text.
//!
//! Each document is scored with lm-eval's `loglikelihood_rolling` (or Hugging
//! Face's sliding window, see [`Windowing`]), the first token conditioned on
//! `<|endoftext|>`; the windows of all documents share forward passes. The
//! summed log-likelihood is then normalised by a unit of the *original*
//! text (words, bytes, characters), which is what makes numbers comparable
//! across tokenizers and detokenizers (the paper's section 3.1).

use crate::data::{self, wikitext_pages};
use crate::detokenize::{self, python_split_count, word_count};
use crate::error::{EvalError, Result};
use crate::report::{Metric, TaskResult};
use crate::Progress;
use gpt2_model::score::{scored_tokens, Scorer, Windowing};
use gpt2_model::{Model, Tokenizer};
use std::f64::consts::LN_2;
use std::path::Path;

/// A document's tokens and the sizes of the original it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub tokens: Vec<u32>,
    pub words: usize,
    pub bytes: usize,
    pub chars: usize,
}

impl Document {
    /// The model reads `scored` (the detokenized text); bytes and
    /// characters are counted on `original`, with `words` counted by the
    /// task's own rule.
    pub fn new(scored: &str, original: &str, words: usize) -> Result<Document> {
        Ok(Document {
            tokens: Tokenizer::gpt2().encode(scored)?,
            words,
            bytes: original.len(),
            chars: original.chars().count(),
        })
    }
}

/// Summed log-likelihoods over documents, and the units they divide by.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub loglik: f64,
    pub tokens: usize,
    pub words: usize,
    pub bytes: usize,
    pub chars: usize,
}

impl Totals {
    fn per(&self, unit: usize) -> f64 {
        -self.loglik / unit as f64
    }
    pub fn token_perplexity(&self) -> f64 {
        self.per(self.tokens).exp()
    }
    pub fn word_perplexity(&self) -> f64 {
        self.per(self.words).exp()
    }
    pub fn byte_perplexity(&self) -> f64 {
        self.per(self.bytes).exp()
    }
    pub fn bits_per_byte(&self) -> f64 {
        self.per(self.bytes) / LN_2
    }
    pub fn bits_per_char(&self) -> f64 {
        self.per(self.chars) / LN_2
    }
}

/// Scores every document; windows of all documents share forward passes.
pub fn score_documents(
    model: &Model,
    docs: &[Document],
    windowing: Windowing,
    progress: &mut dyn Progress,
) -> Result<Totals> {
    let n_ctx = model.config().n_ctx;
    let mut totals = Totals::default();
    for d in docs {
        totals.tokens += scored_tokens(d.tokens.len(), n_ctx, windowing)?;
        totals.words += d.words;
        totals.bytes += d.bytes;
        totals.chars += d.chars;
    }
    progress.start(totals.tokens, "tokens");
    let texts: Vec<&[u32]> = docs.iter().map(|d| &d.tokens[..]).collect();
    let scores =
        Scorer::new(model).score_texts(&texts, windowing, 0, &mut |n| progress.advance(n))?;
    progress.finish();
    // Summed in f64 in document order, as the reference sums per document.
    totals.loglik = scores.iter().flatten().map(|s| s.logprob as f64).sum();
    Ok(totals)
}

fn metric(name: &'static str, value: f64) -> Metric {
    Metric {
        name,
        value,
        stderr: None,
    }
}

/// lm-eval's three metrics of a document task (`wikitext`'s `metric_list`).
fn word_byte_metrics(t: &Totals) -> Vec<Metric> {
    vec![
        metric("word_perplexity", t.word_perplexity()),
        metric("byte_perplexity", t.byte_perplexity()),
        metric("bits_per_byte", t.bits_per_byte()),
    ]
}

/// lm-eval's `wikitext`: articles of a WikiText file (`wiki.test.raw` or
/// `wiki.test.tokens`), each detokenized and scored, normalised by the
/// words and bytes of the article before detokenization.
pub fn wikitext(
    model: &Model,
    path: &Path,
    limit: Option<usize>,
    windowing: Windowing,
    progress: &mut dyn Progress,
) -> Result<TaskResult> {
    let text = data::read_text(path)?;
    let pages = wikitext_pages(&text);
    let original = pages.len();
    let docs = pages
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|page| Document::new(&detokenize::wikitext(page), page, python_split_count(page)))
        .collect::<Result<Vec<_>>>()?;
    let t = score_documents(model, &docs, windowing, progress)?;
    Ok(TaskResult {
        task: "wikitext",
        metrics: word_byte_metrics(&t),
        original,
        effective: docs.len(),
        tokens: t.tokens,
        notes: Vec::new(),
    })
}

/// Mikolov's Penn Treebank (`ptb.test.txt`): one sentence per line, scored
/// as one document after Megatron-LM's detokenizer. Word perplexity counts
/// the words plus one end-of-sentence per line, the convention of the PTB
/// language-modelling literature (82,430 words in the test set).
pub fn ptb(
    model: &Model,
    path: &Path,
    limit: Option<usize>,
    windowing: Windowing,
    progress: &mut dyn Progress,
) -> Result<TaskResult> {
    let text = data::read_text(path)?;
    let sentences = text.lines().filter(|l| !l.trim().is_empty()).count();
    if sentences == 0 {
        let name = path.display().to_string();
        return Err(EvalError::file(&name, "no sentences (only blank lines)"));
    }
    // With a limit, the text up to the end of the limit-th sentence.
    let n_kept = sentences.min(limit.unwrap_or(usize::MAX));
    let mut kept_len = 0;
    let mut seen = 0;
    for line in text.split_inclusive('\n') {
        if seen == n_kept {
            break;
        }
        seen += usize::from(!line.trim().is_empty());
        kept_len += line.len();
    }
    let kept = &text[..kept_len];
    let doc = Document::new(&detokenize::ptb(kept), kept, word_count(kept) + n_kept)?;
    let t = score_documents(model, &[doc], windowing, progress)?;
    Ok(TaskResult {
        task: "ptb",
        metrics: word_byte_metrics(&t),
        original: sentences,
        effective: n_kept,
        tokens: t.tokens,
        notes: Vec::new(),
    })
}

/// Bits per byte and per character of any file (the enwik8 and text8
/// measures). Bytes that are not valid UTF-8 are scored as GPT-2's
/// single-byte tokens, so every byte of the file counts.
pub fn bytes(
    model: &Model,
    path: &Path,
    windowing: Windowing,
    progress: &mut dyn Progress,
) -> Result<TaskResult> {
    let raw = data::read_bytes(path)?;
    let tok = Tokenizer::gpt2();
    let (tokens, invalid) = tok.encode_any_bytes(&raw)?;
    let text = String::from_utf8_lossy(&raw);
    let doc = Document {
        tokens,
        words: word_count(&text),
        bytes: raw.len(),
        // A byte that is not UTF-8 counts as one character.
        chars: text.chars().count(),
    };
    let t = score_documents(model, &[doc], windowing, progress)?;
    let mut notes = Vec::new();
    if invalid > 0 {
        notes.push(format!(
            "{invalid} bytes were not valid UTF-8; each was scored as its single-byte token \
             and counted as one character"
        ));
    }
    Ok(TaskResult {
        task: "bytes",
        metrics: vec![
            metric("bits_per_byte", t.bits_per_byte()),
            metric("bits_per_char", t.bits_per_char()),
            metric("byte_perplexity", t.byte_perplexity()),
        ],
        original: 1,
        effective: 1,
        tokens: t.tokens,
        notes,
    })
}

/// The perplexity of any text, per token, per word and per byte.
pub fn perplexity(
    model: &Model,
    name: &str,
    text: &str,
    windowing: Windowing,
    progress: &mut dyn Progress,
) -> Result<TaskResult> {
    let words = word_count(text);
    if words == 0 {
        return Err(EvalError::file(name, "the text has no words to score"));
    }
    let doc = Document::new(text, text, words)?;
    let t = score_documents(model, &[doc], windowing, progress)?;
    let mut metrics = vec![metric("token_perplexity", t.token_perplexity())];
    let mut notes = Vec::new();
    if windowing.scores_every_token() {
        metrics.extend([
            metric("word_perplexity", t.word_perplexity()),
            metric("byte_perplexity", t.byte_perplexity()),
            metric("bits_per_byte", t.bits_per_byte()),
        ]);
    } else {
        notes.push(format!(
            "llama-perplexity's windows score {} tokens, part of the text: its token perplexity \
             only (words and bytes would need the whole text scored)",
            t.tokens
        ));
    }
    Ok(TaskResult {
        task: "perplexity",
        metrics,
        original: 1,
        effective: 1,
        tokens: t.tokens,
        notes,
    })
}
