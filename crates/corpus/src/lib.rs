//! gpt2-corpus: reading the texts a user hands over, for every command
//! that takes them (`gpt2 prepare`, `eval`, `detect`, `ledger import`, and
//! any FILE argument): UTF-8 text files, folders of them, and JSONL with a
//! string field per line. Errors name the file, and the line and column
//! where there is one; nothing is guessed (invalid UTF-8 is an error, not
//! replaced).

use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// What is wrong, and where: `place` is the file, or `file:line`.
#[derive(Debug, thiserror::Error)]
#[error("{place}: {reason}")]
pub struct CorpusError {
    pub place: String,
    pub reason: String,
}

pub type Result<T, E = CorpusError> = std::result::Result<T, E>;

fn error(place: impl std::fmt::Display, reason: impl Into<String>) -> CorpusError {
    CorpusError {
        place: place.to_string(),
        reason: reason.into(),
    }
}

/// A text and where it came from: the file, or `file:line` for JSONL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub name: String,
    pub text: String,
}

/// The bytes of `path` as UTF-8 text.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| error(path.display(), e.to_string()))?;
    text_of(&path.display().to_string(), bytes)
}

/// `bytes` as UTF-8 text; `name` stands for their source in errors, which
/// name the line, the column and the offset of the first invalid byte.
pub fn text_of(name: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..bad];
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
        error(
            format!("{name}:{line}"),
            format!("not valid UTF-8 (byte {column} of the line, offset {bad})"),
        )
    })
}

/// The lines of a JSONL source as (line number, object), read one at a
/// time (a ledger import may be larger than memory). Blank lines are
/// skipped; a line that is not UTF-8 or not a JSON object is an error
/// naming it.
pub struct JsonLines<R> {
    name: String,
    reader: R,
    line: usize,
    bytes: u64,
}

impl JsonLines<std::io::BufReader<std::fs::File>> {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| error(path.display(), e.to_string()))?;
        Ok(JsonLines::new(
            &path.display().to_string(),
            std::io::BufReader::new(file),
        ))
    }
}

impl<R: BufRead> JsonLines<R> {
    pub fn new(name: &str, reader: R) -> Self {
        JsonLines {
            name: name.to_string(),
            reader,
            line: 0,
            bytes: 0,
        }
    }

    /// Bytes read so far (for progress).
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// `file:line` of line `line`, for errors about its fields.
    pub fn place(&self, line: usize) -> String {
        format!("{}:{line}", self.name)
    }

    pub fn next_object(&mut self) -> Result<Option<(usize, Value)>> {
        loop {
            let mut buf = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| error(&self.name, e.to_string()))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            self.bytes += n as u64;
            let at = self.place(self.line);
            let line = String::from_utf8(buf).map_err(|e| {
                error(
                    &at,
                    format!(
                        "not valid UTF-8 (byte {} of the line)",
                        e.utf8_error().valid_up_to() + 1
                    ),
                )
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&line)
                .map_err(|e| error(&at, format!("not valid JSON: {e}")))?;
            if !value.is_object() {
                return Err(error(&at, "expected a JSON object"));
            }
            return Ok(Some((self.line, value)));
        }
    }

    /// The required string field `field` of line `line`'s object `v`.
    pub fn text<'v>(&self, line: usize, v: &'v Value, field: &str) -> Result<&'v str> {
        v.get(field).and_then(Value::as_str).ok_or_else(|| {
            error(
                self.place(line),
                format!("expected a string field {field:?}"),
            )
        })
    }
}

/// Every document under `inputs`, in a stable order (folders sorted): a
/// file is one document, a `.jsonl` file one per line (its string `field`),
/// a folder one per file.
pub fn collect_documents(inputs: &[PathBuf], field: &str) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| error(input.display(), e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(error(input.display(), "folder holds no files"));
            }
            for f in files {
                read_documents(&f, field, &mut docs)?;
            }
        } else {
            read_documents(input, field, &mut docs)?;
        }
    }
    Ok(docs)
}

fn read_documents(path: &Path, field: &str, docs: &mut Vec<Document>) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| error(path.display(), e.to_string()))?;
    parse_documents(path, bytes, field, docs)
}

/// The documents of one file's bytes (`path` names it in errors and, by its
/// extension, says whether it is JSONL). A file that is empty, holds NUL
/// bytes, or has a JSONL line without the field is an error.
pub fn parse_documents(
    path: &Path,
    bytes: impl Into<Vec<u8>>,
    field: &str,
    docs: &mut Vec<Document>,
) -> Result<()> {
    let name = path.display().to_string();
    let bytes: Vec<u8> = bytes.into();
    if bytes.contains(&0) {
        return Err(error(&name, "holds NUL bytes: not a text file"));
    }
    let text = text_of(&name, bytes)?;
    if text.trim().is_empty() {
        return Err(error(&name, "is empty"));
    }
    if path.extension().is_none_or(|e| e != "jsonl") {
        docs.push(Document { name, text });
        return Ok(());
    }
    let mut lines = JsonLines::new(&name, text.as_bytes());
    while let Some((line, v)) = lines.next_object()? {
        let text = lines.text(line, &v, field)?.to_string();
        docs.push(Document {
            name: lines.place(line),
            text,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, bytes: &[u8]) -> Result<Vec<Document>> {
        let mut docs = Vec::new();
        parse_documents(Path::new(name), bytes, "text", &mut docs).map(|()| docs)
    }

    #[test]
    fn jsonl_lines_become_documents_named_by_line() {
        let docs = parse(
            "a.jsonl",
            b"{\"text\": \"one\"}\n\n{\"text\": \"two\", \"x\": 1}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[1].name.as_str(), docs[1].text.as_str()),
            ("a.jsonl:3", "two")
        );
        assert_eq!(parse("a.txt", b"plain text\n").unwrap()[0].name, "a.txt");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let err = |name: &str, bytes: &[u8]| parse(name, bytes).unwrap_err().to_string();
        assert_eq!(
            err("b.jsonl", b"{\"text\": \"ok\"}\n{oops\n"),
            "b.jsonl:2: not valid JSON: key must be a string at line 1 column 2"
        );
        assert!(err("b.jsonl", b"{\"other\": 1}\n")
            .starts_with("b.jsonl:1: expected a string field \"text\""));
        assert!(err("b.jsonl", b"[1]\n").contains("b.jsonl:1: expected a JSON object"));
        assert_eq!(
            err("c.txt", b"ok\nab\xffc"),
            "c.txt:2: not valid UTF-8 (byte 3 of the line, offset 5)"
        );
        assert!(err("d.txt", b"a\0b").contains("NUL"));
        assert!(err("e.txt", b"  \n").contains("is empty"));
    }
}
