//! Reading the user's inputs: text files or stdin, and `--model`.

use anyhow::{Context, Result};
use gpt2_model::Model;
use std::io::Read;

/// The text of FILE, or of stdin for `-` or no file; not valid UTF-8 is an
/// error naming the source and the offset.
pub fn read_text(file: Option<&str>) -> Result<String> {
    let (name, bytes) = match file {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading stdin")?;
            ("stdin".to_string(), buf)
        }
        Some(path) => (
            path.to_string(),
            std::fs::read(path).with_context(|| format!("reading {path}"))?,
        ),
    };
    Ok(gpt2_corpus::text_of(&name, bytes)?)
}

/// Loads the model `--model` names (see `gpt2_source::resolve`).
pub fn load_model(spec: &str) -> Result<Model> {
    Ok(gpt2_source::load(spec)?)
}
