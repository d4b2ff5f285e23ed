//! gpt2-source: what `--model` may name, and loading it. A checkpoint
//! directory, a GGUF file, `default` (the model built into this crate, so
//! every crate, test and the binary can load it offline), or a Hugging Face
//! hub id found in, or downloaded into, the standard hub cache ([`hub`]).
//!
//! ```no_run
//! let model = gpt2_source::load("default")?;
//! # Ok::<(), gpt2_model::ModelError>(())
//! ```

pub mod hub;

use gpt2_model::gguf::gpt2::is_gguf_file;
use gpt2_model::{Model, ModelError, Result};
use std::path::{Path, PathBuf};

/// The default model, trained by `gpt2 train` on the shared books (see
/// models/default/README.md).
const DEFAULT_CONFIG: &str = include_str!("../../../models/default/config.json");
static DEFAULT_WEIGHTS: &[u8] = include_bytes!("../../../models/default/model.safetensors");

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Dir(PathBuf),
    Gguf(PathBuf),
    Default,
}

/// Resolves `spec` to a checkpoint directory (downloading a hub id into the
/// cache when needed), a GGUF file, or the built-in default model.
pub fn resolve(spec: &str) -> Result<ModelSource> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(ModelSource::Dir(path.to_path_buf()));
    }
    if path.is_file() && is_gguf_file(path) {
        return Ok(ModelSource::Gguf(path.to_path_buf()));
    }
    if path.exists() {
        return Err(ModelError::Resolve {
            spec: spec.into(),
            reason: "is a file but not a GGUF file; --model takes a checkpoint directory \
                     (config.json + model.safetensors) or a GGUF file"
                .into(),
        });
    }
    if spec == "default" {
        return Ok(ModelSource::Default);
    }
    if hub::looks_like_hub_id(spec) {
        return hub::resolve_hub(spec).map(ModelSource::Dir);
    }
    Err(ModelError::Resolve {
        spec: spec.into(),
        reason: "no such directory, and not a hub id (`name` or `org/name`)".into(),
    })
}

/// Loads the model `spec` names (see [`resolve`]).
pub fn load(spec: &str) -> Result<Model> {
    match resolve(spec)? {
        ModelSource::Dir(dir) => Model::load_dir(&dir),
        ModelSource::Gguf(file) => Model::load_gguf(&file),
        ModelSource::Default => default_model(),
    }
}

/// The model built into this crate.
pub fn default_model() -> Result<Model> {
    Model::from_memory(DEFAULT_CONFIG, DEFAULT_WEIGHTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_resolve_or_say_why_not() {
        assert_eq!(resolve("default").unwrap(), ModelSource::Default);
        let dir = std::env::temp_dir().join(format!("gpt2-source-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            resolve(dir.to_str().unwrap()).unwrap(),
            ModelSource::Dir(dir.clone())
        );
        let plain = dir.join("plain.txt");
        std::fs::write(&plain, "hello").unwrap();
        let err = resolve(plain.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("is a file but not a GGUF file"), "{err}");
        let gguf = dir.join("model.bin");
        std::fs::write(&gguf, b"GGUF\x03\0\0\0").unwrap();
        assert_eq!(
            resolve(gguf.to_str().unwrap()).unwrap(),
            ModelSource::Gguf(gguf.clone())
        );
        let err = resolve("no such/model/here").unwrap_err().to_string();
        assert!(err.contains("not a hub id"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(default_model().unwrap().config().n_ctx, 256);
    }
}
