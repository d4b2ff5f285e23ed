//! Reading the evaluation files: LAMBADA's JSONL, WikiText's articles, and
//! plain text, with errors that name the file and the line.

use crate::detokenize::py_strip;
use crate::error::{EvalError, Result};
use std::path::Path;

/// The bytes of `path`, which must not be empty.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        path: name.clone(),
        source,
    })?;
    if bytes.is_empty() {
        return Err(EvalError::file(&name, "the file is empty"));
    }
    Ok(bytes)
}

/// The text of `path`, which must not be empty; invalid UTF-8 is an error
/// naming line and column.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    Ok(gpt2_corpus::text_of(&path.display().to_string(), bytes)?)
}

/// One LAMBADA passage and the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub line: usize,
    pub text: String,
}

/// LAMBADA's JSONL: one `{"text": ...}` per line. Blank lines are skipped;
/// anything else that is not such an object is an error naming the line.
pub fn lambada_passages(path: &Path) -> Result<Vec<Passage>> {
    let name = path.display().to_string();
    let text = read_text(path)?;
    let mut lines = gpt2_corpus::JsonLines::new(&name, text.as_bytes());
    let mut out = Vec::new();
    while let Some((line, v)) = lines.next_object()? {
        let passage = lines.text(line, &v, "text")?;
        if passage.trim().is_empty() {
            return Err(EvalError::data(&name, line, "the passage is empty"));
        }
        out.push(Passage {
            line,
            text: passage.to_string(),
        });
    }
    if out.is_empty() {
        return Err(EvalError::file(&name, "no passages (only blank lines)"));
    }
    Ok(out)
}

/// WikiText's articles, split exactly as the `EleutherAI/wikitext_document_level`
/// dataset script does: a page starts at every level-1 heading line
/// (` = Title = `), a page of only whitespace before one is dropped, and
/// the last page is always kept.
pub fn wikitext_pages(text: &str) -> Vec<String> {
    let mut pages = Vec::new();
    let mut page: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        let heading = line.replace("= = =", "===").replace("= =", "==");
        let heading = py_strip(&heading);
        if heading.starts_with("= ") && heading.ends_with(" =") {
            let joined = page.join("\n");
            if !py_strip(&joined).is_empty() {
                pages.push(joined);
            }
            page.clear();
        }
        page.push(line);
    }
    pages.push(page.join("\n"));
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_at_level_one_headings_only() {
        let text = " \n = A = \n \n x \n = = B = = \n y \n = C = \n z \n";
        assert_eq!(
            wikitext_pages(text),
            vec![" = A = \n \n x \n = = B = = \n y ", " = C = \n z \n"]
        );
    }
}
