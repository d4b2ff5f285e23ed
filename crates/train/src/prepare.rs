//! `gpt2 prepare`: the documents `gpt2_corpus` reads (text files, folders
//! of them, JSONL with a `text` field) become `<|endoftext|>` followed by
//! their tokens; whole documents go to the training or the validation file.

use crate::data::{write_atomic, write_tokens, DataError};
use gpt2_corpus::Document;
use gpt2_model::{Tokenizer, END_OF_TEXT};
use serde_json::json;
use std::path::Path;

/// Joins the hard-wrapped lines of each paragraph (paragraphs end at blank
/// lines) into one line with single spaces, as text on the web is written.
/// A model trained on Gutenberg's 70-column lines learns to expect a line
/// break every dozen words and then misjudges unwrapped text (see the
/// README's evaluation section); verse and indentation are flattened too.
pub fn unwrap_paragraphs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut paragraph: Vec<&str> = Vec::new();
    fn flush(paragraph: &mut Vec<&str>, out: &mut String) {
        if !paragraph.is_empty() {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(&paragraph.join(" "));
            paragraph.clear();
        }
    }
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut paragraph, &mut out);
        } else {
            paragraph.extend(line.split_whitespace());
        }
    }
    flush(&mut paragraph, &mut out);
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

pub struct Split {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub train_docs: Vec<String>,
    pub val_docs: Vec<String>,
}

/// Documents whose name contains one of `val_names` go to validation; with
/// none given, every `1 / val_fraction`-th document does (at least one).
pub fn split(docs: &[Document], val_names: &[String], val_fraction: f64) -> Result<Split, String> {
    let tokenizer = Tokenizer::gpt2();
    let mut s = Split {
        train: Vec::new(),
        val: Vec::new(),
        train_docs: Vec::new(),
        val_docs: Vec::new(),
    };
    let every = if val_fraction > 0.0 {
        (1.0 / val_fraction).round().max(1.0) as usize
    } else {
        usize::MAX
    };
    for (i, d) in docs.iter().enumerate() {
        let to_val = if val_names.is_empty() {
            docs.len() > 1 && (i + 1) % every == 0
        } else {
            val_names.iter().any(|n| d.name.contains(n.as_str()))
        };
        let ids = tokenizer
            .encode(&d.text)
            .map_err(|e| format!("{}: {e}", d.name))?;
        let (tokens, names) = if to_val {
            (&mut s.val, &mut s.val_docs)
        } else {
            (&mut s.train, &mut s.train_docs)
        };
        tokens.push(END_OF_TEXT);
        tokens.extend(ids);
        names.push(d.name.clone());
    }
    for n in val_names {
        if !s.val_docs.iter().any(|d| d.contains(n.as_str())) {
            return Err(format!("--val {n:?} matches no input document"));
        }
    }
    if s.train.is_empty() {
        return Err("every document went to validation; nothing is left to train on".into());
    }
    Ok(s)
}

/// Writes `train.bin`, `val.bin` and `meta.json` into `out`.
pub fn write_split(out: &Path, s: &Split) -> Result<(), DataError> {
    std::fs::create_dir_all(out).map_err(|e| DataError::Io {
        path: out.display().to_string(),
        source: e,
    })?;
    write_tokens(&out.join("train.bin"), &s.train)?;
    write_tokens(&out.join("val.bin"), &s.val)?;
    let meta = json!({
        "tokenizer": "gpt2 (r50k_base)",
        "train_tokens": s.train.len(), "val_tokens": s.val.len(),
        "train_documents": s.train_docs, "val_documents": s.val_docs,
    });
    write_atomic(
        &out.join("meta.json"),
        serde_json::to_string_pretty(&meta)
            .unwrap_or_default()
            .as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_are_unwrapped_and_kept_apart() {
        let text = "  Alice was beginning\nto get very tired\n\n\n\u{201c}So she was\n considering.\u{201d}\n";
        assert_eq!(
            unwrap_paragraphs(text),
            "Alice was beginning to get very tired\n\n\u{201c}So she was considering.\u{201d}\n"
        );
        assert_eq!(unwrap_paragraphs("\n \n"), "");
    }
}
