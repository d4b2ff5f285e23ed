//! Collections of texts named on the command line: a file is one text, a
//! `.jsonl` file is one text per line (a string field), a directory is one
//! text per file.

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// (name, text) pairs, in a stable order.
pub fn load_texts(path: &str, field: &str) -> Result<Vec<(String, String)>> {
    let p = Path::new(path);
    if p.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(p)
            .with_context(|| format!("reading {path}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file())
            .collect();
        files.sort();
        return files
            .iter()
            .map(|f| {
                let name = f.display().to_string();
                Ok((name.clone(), crate::input::read_text(Some(&name))?))
            })
            .collect();
    }
    let text = crate::input::read_text(Some(path))?;
    if !path.ends_with(".jsonl") {
        return Ok(vec![(path.to_string(), text)]);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{path}:{}: not valid JSON: {e}", i + 1))?;
        let Some(t) = v.get(field).and_then(|t| t.as_str()) else {
            bail!(
                "{path}:{}: expected an object with a string field {field:?}",
                i + 1
            );
        };
        out.push((format!("{path}:{}", i + 1), t.to_string()));
    }
    if out.is_empty() {
        bail!("{path}: no texts");
    }
    Ok(out)
}
