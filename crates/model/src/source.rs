//! What `--model` may name: a checkpoint directory, a GGUF file,
//! `default` (the model built into the binary), or a Hugging Face hub id.

use crate::error::{ModelError, Result};
use crate::hub;
use std::path::{Path, PathBuf};

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
    if path.is_file() && crate::gguf::gpt2::is_gguf_file(path) {
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
