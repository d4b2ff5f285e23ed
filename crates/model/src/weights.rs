//! Checkpoint loading: a Hugging Face GPT-2 directory (`config.json` +
//! `model.safetensors`) into [`Weights`].
//!
//! Tensor names may carry the `transformer.` prefix or not; Conv1D weights
//! are stored in x out, which is the layout the kernels use, so f32 tensors
//! are used in place from the memory map. f16 and bf16 tensors are widened to
//! f32 once at load. `lm_head.weight` is tied to `wte.weight`: when a file
//! stores it, it must equal `wte.weight`.

use crate::config::Config;
use crate::error::{ModelError, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A read-only f32 tensor, either a view into a memory-mapped file or owned.
#[derive(Clone)]
pub struct Tensor {
    storage: Storage,
    shape: Vec<usize>,
}

#[derive(Clone)]
enum Storage {
    /// invariant: `offset` is 4-byte aligned within `map` and
    /// `offset + 4 * len <= map.len()`; checked in `Tensor::from_view`.
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<Vec<f32>>),
}

impl Tensor {
    pub fn from_vec(data: Vec<f32>, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Tensor {
            storage: Storage::Owned(Arc::new(data)),
            shape,
        }
    }

    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => {
                // SAFETY: see the invariant on `Storage::Mapped`; the map is
                // read-only and outlives the borrow through `self`.
                unsafe { std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const f32, *len) }
            }
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// True when the data is read in place from the checkpoint file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }
}

/// The weights of one transformer block, names as in the checkpoint.
#[derive(Clone)]
pub struct LayerWeights {
    pub ln_1_w: Tensor,
    pub ln_1_b: Tensor,
    /// [C, 3C]: the query, key and value projections side by side.
    pub attn_w: Tensor,
    pub attn_b: Tensor,
    /// [C, C]
    pub attn_proj_w: Tensor,
    pub attn_proj_b: Tensor,
    pub ln_2_w: Tensor,
    pub ln_2_b: Tensor,
    /// [C, 4C]
    pub fc_w: Tensor,
    pub fc_b: Tensor,
    /// [4C, C]
    pub fc_proj_w: Tensor,
    pub fc_proj_b: Tensor,
}

#[derive(Clone)]
pub struct Weights {
    /// [V, C]; also the LM head.
    pub wte: Tensor,
    /// [n_ctx, C]
    pub wpe: Tensor,
    pub layers: Vec<LayerWeights>,
    pub ln_f_w: Tensor,
    pub ln_f_b: Tensor,
}

/// The tensor names of one layer, in `LayerWeights` field order, with their
/// shapes as multiples of C.
const LAYER_TENSORS: [(&str, usize, usize); 12] = [
    ("ln_1.weight", 0, 1),
    ("ln_1.bias", 0, 1),
    ("attn.c_attn.weight", 1, 3),
    ("attn.c_attn.bias", 0, 3),
    ("attn.c_proj.weight", 1, 1),
    ("attn.c_proj.bias", 0, 1),
    ("ln_2.weight", 0, 1),
    ("ln_2.bias", 0, 1),
    ("mlp.c_fc.weight", 1, 4),
    ("mlp.c_fc.bias", 0, 4),
    ("mlp.c_proj.weight", 4, 1),
    ("mlp.c_proj.bias", 0, 1),
];

/// Buffers that old checkpoints store beside the parameters (the causal mask);
/// they carry no information.
fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

impl Weights {
    /// Loads `model.safetensors` for the shape `config`.
    pub fn load(path: &Path, config: &Config) -> Result<Weights> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint changed on disk while it
        // is loaded is outside what any loader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let map = Arc::new(map);
        Self::parse(path, &map, Some(&map), config)
    }

    /// Loads weights from bytes in memory (a checkpoint built into the
    /// binary); `name` stands for the file in error messages. Tensors are
    /// copied out of `bytes`.
    pub fn from_bytes(name: &Path, bytes: &[u8], config: &Config) -> Result<Weights> {
        Self::parse(name, bytes, None, config)
    }

    fn parse(
        path: &Path,
        bytes: &[u8],
        map: Option<&Arc<Mmap>>,
        config: &Config,
    ) -> Result<Weights> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let loader = Loader {
            path,
            map,
            st: &st,
            prefix: detect_prefix(&st),
            config,
        };
        loader.check_no_unexpected_layers()?;
        loader.load_all()
    }
}

fn detect_prefix(st: &SafeTensors) -> &'static str {
    if st.names().iter().any(|n| n.starts_with("transformer.")) {
        "transformer."
    } else {
        ""
    }
}

struct Loader<'a> {
    path: &'a Path,
    /// The memory map `st` reads from, when there is one: f32 tensors are
    /// then used in place.
    map: Option<&'a Arc<Mmap>>,
    st: &'a SafeTensors<'a>,
    prefix: &'static str,
    config: &'a Config,
}

impl Loader<'_> {
    /// Every tensor in the order and shapes `tensor_shapes` gives, then
    /// the tied head's check.
    fn load_all(&self) -> Result<Weights> {
        let tensors = tensor_shapes(self.config)
            .iter()
            .map(|(name, shape)| self.tensor(name, shape))
            .collect::<Result<Vec<_>>>()?;
        let mut t = tensors.into_iter();
        let mut next = || {
            t.next()
                .expect("invariant: tensor_shapes lists every tensor once")
        };
        let wte = next();
        let wpe = next();
        let layers = (0..self.config.n_layer)
            .map(|_| LayerWeights {
                ln_1_w: next(),
                ln_1_b: next(),
                attn_w: next(),
                attn_b: next(),
                attn_proj_w: next(),
                attn_proj_b: next(),
                ln_2_w: next(),
                ln_2_b: next(),
                fc_w: next(),
                fc_b: next(),
                fc_proj_w: next(),
                fc_proj_b: next(),
            })
            .collect();
        let weights = Weights {
            wte,
            wpe,
            layers,
            ln_f_w: next(),
            ln_f_b: next(),
        };
        self.check_tied_head(&weights.wte)?;
        Ok(weights)
    }

    /// A checkpoint with more layers than config.json says is a mismatch, not
    /// something to silently truncate.
    fn check_no_unexpected_layers(&self) -> Result<()> {
        for name in self.st.names() {
            let bare = name.strip_prefix(self.prefix).unwrap_or(name);
            if is_ignored_buffer(bare) {
                continue;
            }
            if let Some(rest) = bare.strip_prefix("h.") {
                let index = rest.split('.').next().and_then(|s| s.parse::<usize>().ok());
                if index.is_some_and(|i| i >= self.config.n_layer) {
                    return Err(ModelError::ConfigMismatch {
                        path: self.path.to_path_buf(),
                        reason: format!(
                            "tensor `{name}` belongs to a layer beyond the {} that config.json declares (`n_layer`)",
                            self.config.n_layer
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_tied_head(&self, wte: &Tensor) -> Result<()> {
        let Ok(head) = self.st.tensor("lm_head.weight") else {
            return Ok(());
        };
        let head = self.convert("lm_head.weight", head, wte.shape())?;
        if head.data() != wte.data() {
            return Err(ModelError::Tensor {
                path: self.path.to_path_buf(),
                tensor: "lm_head.weight".into(),
                reason: "differs from wte.weight; GPT-2 ties the LM head to the token embedding"
                    .into(),
            });
        }
        Ok(())
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{}", self.prefix, name);
        let view = self
            .st
            .tensor(&full)
            .map_err(|_| ModelError::MissingTensor {
                path: self.path.to_path_buf(),
                tensor: full.clone(),
            })?;
        self.convert(&full, view, shape)
    }

    fn convert(
        &self,
        name: &str,
        view: safetensors::tensor::TensorView<'_>,
        shape: &[usize],
    ) -> Result<Tensor> {
        let err = |reason: String| ModelError::Tensor {
            path: self.path.to_path_buf(),
            tensor: name.to_string(),
            reason,
        };
        if view.shape() != shape {
            return Err(err(format!(
                "shape {:?} does not match {:?} implied by config.json ({})",
                view.shape(),
                shape,
                describe(self.config)
            )));
        }
        let bytes = view.data();
        let len: usize = shape.iter().product();
        let data = match view.dtype() {
            Dtype::F32 => {
                if let Some(map) = self.map {
                    let offset = bytes.as_ptr() as usize - map.as_ptr() as usize;
                    if offset.is_multiple_of(4) && cfg!(target_endian = "little") {
                        return Ok(Tensor {
                            storage: Storage::Mapped {
                                map: Arc::clone(map),
                                offset,
                                len,
                            },
                            shape: shape.to_vec(),
                        });
                    }
                }
                widen(bytes, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]), 4)
            }
            Dtype::F16 => widen(
                bytes,
                |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                2,
            ),
            Dtype::BF16 => widen(
                bytes,
                |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                2,
            ),
            other => {
                return Err(err(format!(
                    "dtype {other:?} is not supported (f32, f16 or bf16)"
                )))
            }
        };
        Ok(Tensor::from_vec(data, shape.to_vec()))
    }
}

fn widen(bytes: &[u8], convert: impl Fn(&[u8]) -> f32, size: usize) -> Vec<f32> {
    bytes.chunks_exact(size).map(convert).collect()
}

fn describe(c: &Config) -> String {
    format!(
        "vocab_size={}, n_positions={}, n_embd={}, n_layer={}, n_head={}",
        c.vocab_size, c.n_ctx, c.n_embd, c.n_layer, c.n_head
    )
}

/// A checkpoint directory's files.
pub struct CheckpointFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
}

impl CheckpointFiles {
    pub fn in_dir(dir: &Path) -> Result<CheckpointFiles> {
        let config = dir.join("config.json");
        let weights = dir.join("model.safetensors");
        if !config.is_file() {
            return Err(ModelError::io(
                &config,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no config.json in the model directory",
                ),
            ));
        }
        if !weights.is_file() {
            let reason = if dir.join("model.safetensors.index.json").is_file() {
                "sharded checkpoints are not supported; merge the shards into one model.safetensors"
            } else if dir.join("pytorch_model.bin").is_file() {
                "only pytorch_model.bin is present; convert it to model.safetensors (pickle files are not loaded)"
            } else {
                "no model.safetensors in the model directory"
            };
            return Err(ModelError::io(
                &weights,
                std::io::Error::new(std::io::ErrorKind::NotFound, reason),
            ));
        }
        Ok(CheckpointFiles { config, weights })
    }
}

/// Every tensor a checkpoint of this shape holds, with its shape, in the
/// order of the layers (the names without the `transformer.` prefix; the
/// tied LM head is not listed).
pub fn tensor_shapes(config: &Config) -> Vec<(String, Vec<usize>)> {
    let c = config.n_embd;
    let mut out = vec![
        ("wte.weight".to_string(), vec![config.vocab_size, c]),
        ("wpe.weight".to_string(), vec![config.n_ctx, c]),
    ];
    for i in 0..config.n_layer {
        out.extend(LAYER_TENSORS.iter().map(|&(name, rows, cols)| {
            let shape = if rows == 0 {
                vec![cols * c]
            } else {
                vec![rows * c, cols * c]
            };
            (format!("h.{i}.{name}"), shape)
        }));
    }
    out.push(("ln_f.weight".to_string(), vec![c]));
    out.push(("ln_f.bias".to_string(), vec![c]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_shapes_count_every_parameter() {
        for config in [Config::GPT2, Config::GPT2_MEDIUM] {
            let total: usize = tensor_shapes(&config)
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            assert_eq!(total, config.num_parameters());
        }
    }
}
