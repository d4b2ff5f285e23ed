//! `gpt2 prepare`: text files, folders of them, or JSONL with a string
//! field (`text` for training) become documents; each document is `<|endoftext|>` followed by its
//! tokens; whole documents go to the training or the validation file.

use crate::data::{write_atomic, write_tokens, DataError};
use gpt2_model::{Tokenizer, END_OF_TEXT};
use serde_json::json;
use std::path::{Path, PathBuf};

pub struct Document {
    /// The file (and line, for JSONL) it came from.
    pub name: String,
    pub text: String,
}

fn bad(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Every document under `inputs`, in a stable order (folders sorted): a
/// file is one document, a `.jsonl` file one per line (its string `field`),
/// a folder one per file. `gpt2 detect` reads its texts the same way.
pub fn collect_documents(inputs: &[PathBuf], field: &str) -> Result<Vec<Document>, DataError> {
    let mut docs = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| DataError::Io {
                    path: input.display().to_string(),
                    source: e,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(bad(input, "folder holds no files"));
            }
            for f in files {
                read_file(&f, field, &mut docs)?;
            }
        } else {
            read_file(input, field, &mut docs)?;
        }
    }
    Ok(docs)
}

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

fn read_file(path: &Path, field: &str, docs: &mut Vec<Document>) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    parse_documents(path, bytes, field, docs)
}

/// The documents of one file's bytes (`path` names it in errors and, by its
/// extension, says whether it is JSONL).
pub fn parse_documents(
    path: &Path,
    bytes: impl Into<Vec<u8>>,
    field: &str,
    docs: &mut Vec<Document>,
) -> Result<(), DataError> {
    let bytes: Vec<u8> = bytes.into();
    if bytes.contains(&0) {
        return Err(bad(path, "holds NUL bytes: not a text file"));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        bad(
            path,
            format!(
                "not valid UTF-8 (first invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Err(bad(path, "is empty"));
    }
    if path.extension().is_some_and(|e| e == "jsonl") {
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let n = i + 1;
            let at_line = |reason: String| DataError::Format {
                path: format!("{}:{n}", path.display()),
                reason,
            };
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| at_line(format!("line {n} is not valid JSON: {e}")))?;
            let t = v
                .get(field)
                .and_then(|t| t.as_str())
                .ok_or_else(|| at_line(format!("line {n} has no string field {field:?}")))?;
            docs.push(Document {
                name: format!("{}:{}", path.display(), i + 1),
                text: t.to_string(),
            });
        }
    } else {
        docs.push(Document {
            name: path.display().to_string(),
            text,
        });
    }
    Ok(())
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
