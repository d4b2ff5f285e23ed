//! LAMBADA (Paperno et al. 2016) as OpenAI detokenized it for GPT-2: guess
//! the last word of a passage.
//!
//! Two ways of judging:
//! - [`lambada_openai`]: lm-evaluation-harness's `lambada_openai`. The target
//!   is `" " + last word`; `acc` counts a passage when every target token is
//!   the argmax given the true prefix, `perplexity` is exp of minus the mean
//!   summed log-probability of the target tokens.
//! - [`lambada_word`]: the paper's view of it, a word-level guess. The model
//!   decodes greedily from the context until it has finished a word, and
//!   the passage counts when that word equals the last word. This is
//!   stricter: lm-eval accepts " he" when the model would go on to write
//!   " hello", and it scores the target's tokens with the true earlier
//!   tokens fed in (teacher forcing), where here the model's own guesses
//!   are. (The paper's best number also used a stop-word filter, not done
//!   here.)

use crate::data::Passage;
use crate::detokenize::is_py_space;
use crate::error::{EvalError, Result};
use crate::metrics::{bootstrap_stderr, mean, mean_stderr, perplexity, BOOTSTRAP_ITERS};
use crate::report::{Metric, TaskResult};
use crate::Progress;
use gpt2_generate::{Decoder, Event, SamplingParams, SeqSpec};
use gpt2_model::score::{Scorer, Span};
use gpt2_model::{Model, Tokenizer, END_OF_TEXT};
use std::sync::Arc;

/// lm-eval's `doc_to_text` and `doc_to_target`: everything before the last
/// space, and a space followed by the last word.
pub fn split_passage(text: &str) -> (&str, String) {
    match text.rfind(' ') {
        Some(i) => (&text[..i], text[i..].to_string()),
        None => ("", format!(" {text}")),
    }
}

/// lm-eval's `_encode_pair`: trailing spaces of the context move to the
/// continuation, and the continuation's tokens are what the whole encodes
/// to past the context's tokens. An empty context is `<|endoftext|>`.
pub fn encode_pair(
    tok: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    if context.is_empty() {
        return Ok((vec![END_OF_TEXT], tok.encode(continuation)?));
    }
    let kept = context.trim_end_matches(is_py_space);
    let moved = format!("{}{continuation}", &context[kept.len()..]);
    let whole = tok.encode(&format!("{kept}{moved}"))?;
    let context_ids = tok.encode(kept)?;
    let continuation_ids = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
    Ok((context_ids, continuation_ids))
}

/// Scores every passage the lm-eval way.
pub fn lambada_openai(
    model: &Model,
    passages: &[Passage],
    path: &str,
    progress: &mut dyn Progress,
) -> Result<TaskResult> {
    let tok = Tokenizer::gpt2();
    let n_ctx = model.config().n_ctx;
    let mut spans = Vec::with_capacity(passages.len());
    let mut truncated = 0;
    for p in passages {
        let (context, target) = split_passage(&p.text);
        let (ctx, cont) = encode_pair(&tok, context, &target)?;
        if cont.is_empty() || cont.len() > n_ctx {
            return Err(EvalError::data(
                path,
                p.line,
                format!(
                    "the target {target:?} is {} tokens; it must be 1 to {n_ctx}",
                    cont.len()
                ),
            ));
        }
        // lm-eval: (context + continuation)[-(n_ctx + 1):][:-1]
        let mut all = ctx;
        all.extend_from_slice(&cont);
        let keep = (all.len() - 1).min(n_ctx);
        truncated += usize::from(all.len() - 1 > n_ctx);
        let input = all[all.len() - 1 - keep..all.len() - 1].to_vec();
        spans.push(Span {
            input,
            targets: cont,
        });
    }
    progress.start(spans.iter().map(|s| s.targets.len()).sum(), "target tokens");
    let scores = Scorer::new(model).score_spans(&spans, 0, &mut |n| progress.advance(n))?;
    progress.finish();
    let logliks: Vec<f64> = scores
        .iter()
        .map(|s| s.iter().map(|t| t.logprob as f64).sum())
        .collect();
    let hits: Vec<f64> = scores
        .iter()
        .map(|s| f64::from(u8::from(s.iter().all(|t| t.is_greedy()))))
        .collect();
    let mut notes = Vec::new();
    if truncated > 0 {
        notes.push(format!(
            "{truncated} passages were longer than the context of {n_ctx} tokens; \
             their beginnings were cut, as lm-eval does"
        ));
    }
    Ok(TaskResult {
        task: "lambada_openai",
        metrics: vec![
            Metric {
                name: "perplexity",
                value: perplexity(&logliks),
                stderr: bootstrap_stderr(&logliks, perplexity, BOOTSTRAP_ITERS),
            },
            Metric {
                name: "acc",
                value: mean(&hits),
                stderr: mean_stderr(&hits),
            },
        ],
        original: passages.len(),
        effective: passages.len(),
        tokens: spans.iter().map(|s| s.targets.len()).sum(),
        notes,
    })
}

/// Tokens the word-level guess may take before it is cut off.
pub const MAX_WORD_TOKENS: usize = 8;

/// The word a continuation starts with: leading whitespace dropped, cut at
/// the first character that cannot be inside a word (not alphanumeric, not
/// an apostrophe or hyphen). `None` while the word may still go on.
pub fn finished_word(continuation: &str) -> Option<&str> {
    let s = continuation.trim_start_matches(is_py_space);
    s.find(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .map(|end| &s[..end])
}

/// Judges every passage by the word the model writes after the context.
pub fn lambada_word(
    model: &Model,
    passages: &[Passage],
    progress: &mut dyn Progress,
) -> Result<TaskResult> {
    let tok = Tokenizer::gpt2();
    let keep = model.config().n_ctx - MAX_WORD_TOKENS;
    let mut contexts = Vec::with_capacity(passages.len());
    let mut truncated = 0;
    for p in passages {
        let (context, _) = split_passage(&p.text);
        let mut ids = if context.is_empty() {
            vec![END_OF_TEXT]
        } else {
            tok.encode(context)?
        };
        if ids.len() > keep {
            truncated += 1;
            ids.drain(..ids.len() - keep);
        }
        contexts.push(ids);
    }
    progress.start(passages.len(), "passages");
    let guesses = greedy_continuations(model, &tok, &contexts, progress)?;
    progress.finish();
    let hits: Vec<f64> = passages
        .iter()
        .zip(&guesses)
        .map(|(p, g)| {
            let target = split_passage(&p.text).1;
            let text = tok.decode(g).unwrap_or_default();
            let word = finished_word(&text).unwrap_or(text.trim_start_matches(is_py_space));
            f64::from(u8::from(word == &target[1..]))
        })
        .collect();
    let mut notes = Vec::new();
    if truncated > 0 {
        notes.push(format!(
            "{truncated} contexts were cut to their last {keep} tokens"
        ));
    }
    Ok(TaskResult {
        task: "lambada_openai_word",
        metrics: vec![Metric {
            name: "acc",
            value: mean(&hits),
            stderr: mean_stderr(&hits),
        }],
        original: passages.len(),
        effective: passages.len(),
        tokens: guesses.iter().map(Vec::len).sum(),
        notes,
    })
}

/// Greedy continuations of every context until a word is finished or
/// [`MAX_WORD_TOKENS`] are written; contexts share forward passes.
fn greedy_continuations(
    model: &Model,
    tok: &Tokenizer,
    contexts: &[Vec<u32>],
    progress: &mut dyn Progress,
) -> Result<Vec<Vec<u32>>> {
    const MAX_ROWS: usize = 2048;
    let mut out = Vec::with_capacity(contexts.len());
    let mut start = 0;
    while start < contexts.len() {
        // As many contexts as fit the row budget, with the cache sized to the longest.
        let (mut end, mut rows, mut longest) = (start, 0, 0);
        while end < contexts.len() {
            let len = contexts[end].len();
            let cells = (end - start + 1) * (longest.max(len) + MAX_WORD_TOKENS);
            if end > start && (rows + len > MAX_ROWS || cells > 2 * MAX_ROWS) {
                break;
            }
            rows += len;
            longest = longest.max(len);
            end += 1;
        }
        let group = &contexts[start..end];
        out.extend(greedy_group(model, tok, group, longest + MAX_WORD_TOKENS)?);
        progress.advance(group.len());
        start = end;
    }
    Ok(out)
}

/// Greedy continuations of `contexts`, decoded together; each sequence
/// leaves the batch once it has written a whole word.
fn greedy_group(
    model: &Model,
    tok: &Tokenizer,
    contexts: &[Vec<u32>],
    capacity: usize,
) -> Result<Vec<Vec<u32>>> {
    let greedy = SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        repetition_penalty: 1.0,
    };
    let mut decoder = Decoder::with_capacity(model, contexts.len(), capacity);
    let no_stops: Arc<[String]> = Arc::from(Vec::new());
    for (i, ids) in contexts.iter().enumerate() {
        let spec = SeqSpec {
            tag: i as u64,
            max_tokens: MAX_WORD_TOKENS,
            sampling: greedy,
            seed: 0,
            stream: 0,
            stop: no_stops.clone(),
            top_logprobs: 0,
            watermark: None,
            adjust: Default::default(),
            ignore_eos: false,
        };
        decoder.join(ids, vec![spec])?;
    }
    let mut written: Vec<Vec<u32>> = vec![Vec::new(); contexts.len()];
    let mut finished = vec![false; contexts.len()];
    while !decoder.is_idle() {
        decoder.step(&mut |e| {
            if let Event::Token { tag, token, .. } = e {
                let w = &mut written[tag as usize];
                w.push(token.id);
                let text = tok.decode(w).unwrap_or_default();
                finished[tag as usize] = finished_word(&text).is_some();
            }
        })?;
        decoder.retain(|tag| !finished[tag as usize]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passages_split_at_the_last_space() {
        assert_eq!(split_passage("a b  c"), ("a b ", " c".to_string()));
        assert_eq!(split_passage("word"), ("", " word".to_string()));
    }

    #[test]
    fn trailing_context_spaces_join_the_target() {
        let tok = Tokenizer::gpt2();
        let (ctx, cont) = encode_pair(&tok, "a b ", " c").unwrap();
        assert_eq!(ctx, tok.encode("a b").unwrap());
        let whole = tok.encode("a b  c").unwrap();
        assert_eq!(cont, whole[ctx.len()..]);
        assert_eq!(encode_pair(&tok, "", " c").unwrap().0, vec![END_OF_TEXT]);
    }

    #[test]
    fn words_end_at_spaces_and_punctuation() {
        assert_eq!(finished_word(" hello"), None);
        assert_eq!(finished_word(" hello there"), Some("hello"));
        assert_eq!(finished_word(" don't."), Some("don't"));
        assert_eq!(finished_word("\n\nwell-known,"), Some("well-known"));
        assert_eq!(finished_word(" ."), Some(""));
    }
}
