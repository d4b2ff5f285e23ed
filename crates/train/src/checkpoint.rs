//! Training checkpoints: `OUT/step-NNNNNN/` holds `config.json` and
//! `model.safetensors` in the Hugging Face layout (so `transformers` and
//! `gpt2 --model` load it unchanged), `optimizer.bin` (AdamW's step and
//! moments) and `state.json` (the run's settings and position). `OUT/latest`
//! names the newest complete one.
//!
//! Writes are atomic: a checkpoint is written into a temporary directory,
//! every file fsynced, then the directory renamed into place, and only then
//! is `latest` replaced (itself through a temporary file and a rename). A
//! run killed at any moment leaves the previous checkpoint loadable.

use crate::adamw::AdamW;
use crate::data::{write_atomic, DataError};
use gpt2_model::atomic::write_atomic_with;
use gpt2_model::convert::{f32_le_bytes, write_safetensors_file, Entry};
use gpt2_model::layout::tensor_shapes;
use gpt2_model::Config;
use safetensors::Dtype;
use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const OPT_MAGIC: &[u8; 8] = b"GPT2OPT\0";

/// Storage precision of the saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
}

fn io(path: &Path, e: std::io::Error) -> DataError {
    DataError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// Writes `config.json` and `model.safetensors` into `dir` (which exists).
pub fn write_model(
    dir: &Path,
    config: &Config,
    params: &[f32],
    precision: Precision,
) -> Result<(), DataError> {
    let entries = model_entries(config, params, precision, "");
    write_files(dir, &config.to_hf_json(), &entries)
}

/// Writes `config_json` as `config.json` and `entries` as
/// `model.safetensors` into `dir` (which exists).
pub fn write_files(
    dir: &Path,
    config_json: &serde_json::Value,
    entries: &[Entry],
) -> Result<(), DataError> {
    let text =
        serde_json::to_string_pretty(config_json).map_err(|e| io(dir, std::io::Error::other(e)))?;
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    write_safetensors_file(&dir.join("model.safetensors"), entries, &[])
        .map_err(|e| io(dir, std::io::Error::other(e)))
}

/// The tensors of a flat parameter buffer, named as the checkpoint names
/// them after `prefix` (`transformer.` under a task head).
pub fn model_entries<'a>(
    config: &Config,
    params: &'a [f32],
    precision: Precision,
    prefix: &str,
) -> Vec<Entry<'a>> {
    let mut at = 0;
    let mut entries = Vec::new();
    for (name, shape) in tensor_shapes(config) {
        let n: usize = shape.iter().product();
        entries.push(tensor_entry(
            format!("{prefix}{name}"),
            shape,
            &params[at..at + n],
            precision,
        ));
        at += n;
    }
    entries
}

/// One tensor of `data` in `precision`.
pub fn tensor_entry(
    name: String,
    shape: Vec<usize>,
    data: &[f32],
    precision: Precision,
) -> Entry<'_> {
    let (dtype, bytes) = match precision {
        Precision::F32 => (Dtype::F32, f32_le_bytes(data)),
        Precision::F16 => (
            Dtype::F16,
            Cow::Owned(
                data.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
            ),
        ),
    };
    Entry {
        name,
        dtype,
        shape,
        bytes,
    }
}

/// Writes `optimizer.bin` (magic, step, parameter count, m, v) as it goes:
/// the moments are twice the model's size, too large to copy first.
fn write_optimizer(path: &Path, opt: &AdamW) -> Result<(), DataError> {
    let (step, m, v) = opt.state();
    write_atomic_with(path, |tmp| {
        let mut w = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        w.write_all(OPT_MAGIC)?;
        w.write_all(&step.to_le_bytes())?;
        w.write_all(&(m.len() as u64).to_le_bytes())?;
        w.write_all(&f32_le_bytes(m))?;
        w.write_all(&f32_le_bytes(v))?;
        w.flush()
    })
    .map_err(|e| io(path, e))
}

/// Reads `optimizer.bin` into `opt`, decoding the moments straight from
/// the file (the twin of `write_optimizer`: no whole copy of the file is
/// held beside them).
pub fn read_optimizer(path: &Path, opt: &mut AdamW) -> Result<(), DataError> {
    let bad = |reason: String| DataError::Format {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    let mut r = std::io::BufReader::new(file);
    let mut head = [0u8; 24];
    if len < 24 || r.read_exact(&mut head).is_err() || &head[..8] != OPT_MAGIC {
        return Err(bad("not an optimizer state file".into()));
    }
    let word =
        |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("invariant: 8 bytes"));
    let (step, n) = (word(8), word(16));
    // n comes from the file: the expected size is computed without overflow.
    let expected = n.checked_mul(8).and_then(|b| b.checked_add(24));
    let n = match (expected, usize::try_from(n)) {
        (Some(e), Ok(n)) if e == len => n,
        _ => {
            let expected = expected.map_or("more than 2^64".to_string(), |e| e.to_string());
            return Err(bad(format!(
                "holds {len} bytes, expected {expected} for {n} parameters (truncated?)"
            )));
        }
    };
    let m = read_f32s(&mut r, n).map_err(|e| io(path, e))?;
    let v = read_f32s(&mut r, n).map_err(|e| io(path, e))?;
    opt.restore(step, m, v).map_err(bad)
}

/// `n` little-endian f32s from `r`.
fn read_f32s(r: &mut impl Read, n: usize) -> std::io::Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    let mut buf = vec![0u8; 1 << 16];
    for chunk in out.chunks_mut(buf.len() / 4) {
        let bytes = &mut buf[..4 * chunk.len()];
        r.read_exact(bytes)?;
        for (x, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Ok(out)
}

/// Saves a complete checkpoint for `step` under `out` and points
/// `out/latest` at it. Returns its directory.
pub fn save(
    out: &Path,
    step: u64,
    config: &Config,
    params: &[f32],
    opt: &AdamW,
    state: &serde_json::Value,
    precision: Precision,
) -> Result<PathBuf, DataError> {
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let name = format!("step-{step:06}");
    let tmp = out.join(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    write_model(&tmp, config, params, precision)?;
    write_optimizer(&tmp.join("optimizer.bin"), opt)?;
    write_atomic(&tmp.join("state.json"), state.to_string().as_bytes())?;
    let dir = out.join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
    sync_dir(out)?;
    write_atomic(&out.join("latest"), name.as_bytes())?;
    sync_dir(out)?;
    Ok(dir)
}

fn sync_dir(dir: &Path) -> Result<(), DataError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(dir, e))
}

/// The newest complete checkpoint under `out`.
pub fn latest(out: &Path) -> Result<PathBuf, DataError> {
    let pointer = out.join("latest");
    let name = std::fs::read_to_string(&pointer).map_err(|e| io(&pointer, e))?;
    let name = name.trim();
    if !name.starts_with("step-") || name.contains('/') {
        return Err(DataError::Format {
            path: pointer.display().to_string(),
            reason: format!("does not name a checkpoint: {name:?}"),
        });
    }
    Ok(out.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stepped_optimizer() -> AdamW {
        let mut opt = AdamW::new(&[3, 2], &[true, false]);
        let mut params = vec![0.5f32; 5];
        opt.update(&mut params, &[0.1, -0.2, 0.3, -0.4, 0.5], 1e-3);
        opt
    }

    #[test]
    fn the_optimizer_state_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.bin");
        let saved = stepped_optimizer();
        write_optimizer(&path, &saved).unwrap();
        let mut read = AdamW::new(&[3, 2], &[true, false]);
        read_optimizer(&path, &mut read).unwrap();
        assert_eq!(read.state(), saved.state());
    }

    /// The weights are as readable as the config beside them: the
    /// safetensors writer's own temporary file is owner-only.
    #[cfg(unix)]
    #[test]
    fn the_weights_get_the_permissions_of_any_created_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            vocab_size: 8,
            n_ctx: 4,
            n_embd: 4,
            n_head: 2,
            n_layer: 1,
        };
        let params = vec![0.25f32; crate::params::sizes(&config).iter().sum()];
        write_model(dir.path(), &config, &params, Precision::F32).unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode("model.safetensors"), mode("config.json"));
    }

    /// A truncated file, one whose parameter count would overflow the size
    /// computation, and one that is not an optimizer file are each refused
    /// with a message, never a panic.
    #[test]
    fn a_damaged_optimizer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.bin");
        write_optimizer(&path, &stepped_optimizer()).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let mut huge = whole.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        for (bytes, want) in [
            (whole[..whole.len() - 4].to_vec(), "truncated?"),
            (huge, "more than 2^64"),
            (
                b"not an optimizer file at all".to_vec(),
                "not an optimizer state file",
            ),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let mut opt = AdamW::new(&[3, 2], &[true, false]);
            let err = read_optimizer(&path, &mut opt).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
