//! Checkpoint loading: a Hugging Face GPT-2 directory (`config.json` +
//! `model.safetensors`) into [`Weights`].
//!
//! Tensor names may carry the `transformer.` prefix or not; Conv1D weights
//! are stored in x out, which is the layout the kernels use, so f32 tensors
//! are used in place from the memory map. f16 and bf16 tensors are widened to
//! f32 once at load. `lm_head.weight` is tied to `wte.weight`: when a file
//! stores it, it must equal `wte.weight`.
//!
//! Files written by `gpt2 quantize` hold the token embedding and the four
//! matrices of each layer packed (`crate::packed`) as `NAME.packed` (f16,
//! bf16, i8 for q8_0, u8 for q4_0; `[out, in]`) and `NAME.scales` (f32,
//! `[out, in / 32]`); those are read in place from the map too.

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::layout::{self, Gpt2, Layer, Source};
use crate::packed::{Format, PackedMatrix, BLOCK};
use crate::storage::Storage;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A read-only f32 tensor, either a view into a memory-mapped file or owned.
#[derive(Clone)]
pub struct Tensor {
    storage: Storage<f32>,
    shape: Vec<usize>,
}

impl Tensor {
    pub fn from_vec(data: Vec<f32>, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Tensor {
            storage: Storage::owned(data),
            shape,
        }
    }

    /// `shape`'s f32 values in place at `offset` of `map`, if they can be
    /// read there (see [`Storage::mapped`]).
    pub(crate) fn mapped(map: &Arc<Mmap>, offset: usize, shape: &[usize]) -> Option<Tensor> {
        let len = shape.iter().product();
        Some(Tensor {
            storage: Storage::mapped(map, offset, len)?,
            shape: shape.to_vec(),
        })
    }

    pub fn data(&self) -> &[f32] {
        self.storage.as_slice()
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// True when the data is read in place from the checkpoint file.
    pub fn is_mapped(&self) -> bool {
        self.storage.is_mapped()
    }
}

/// A layer's weight matrix: the checkpoint's f32 Conv1D `[in, out]`, or a
/// packed `[out, in]` copy.
#[derive(Clone)]
pub enum Linear {
    Conv1D(Tensor),
    Packed(PackedMatrix),
}

impl From<Tensor> for Linear {
    fn from(t: Tensor) -> Linear {
        Linear::Conv1D(t)
    }
}

impl Linear {
    /// The weights as f32 in the Conv1D layout `[in, out]` (widened and
    /// transposed back when packed).
    pub fn to_conv1d(&self) -> Cow<'_, [f32]> {
        match self {
            Linear::Conv1D(t) => Cow::Borrowed(t.data()),
            Linear::Packed(m) => Cow::Owned(transpose(&m.unpack(), m.rows(), m.cols())),
        }
    }

    /// This matrix packed as `format` (from the f32 values it holds).
    pub fn pack(&self, format: Format) -> Result<PackedMatrix, String> {
        match self {
            Linear::Conv1D(t) => {
                let (k, n) = (t.shape()[0], t.shape()[1]);
                PackedMatrix::pack(format, &transpose(t.data(), k, n), n, k)
            }
            Linear::Packed(m) => PackedMatrix::pack(format, &m.unpack(), m.rows(), m.cols()),
        }
    }

    /// "f32", or the packed format's name.
    pub fn format_name(&self) -> &'static str {
        match self {
            Linear::Conv1D(_) => "f32",
            Linear::Packed(m) => m.format().name(),
        }
    }
}

/// `[rows, cols]` row-major into `[cols, rows]`.
pub(crate) fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for (i, row) in w.chunks_exact(cols.max(1)).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * rows + i] = v;
        }
    }
    out
}

/// The token embedding `[vocab, C]`, which is also the tied LM head.
#[derive(Clone)]
pub enum Embedding {
    F32(Tensor),
    Packed(PackedMatrix),
}

impl Embedding {
    /// All rows as f32 `[vocab, C]`.
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match self {
            Embedding::F32(t) => Cow::Borrowed(t.data()),
            Embedding::Packed(m) => Cow::Owned(m.unpack()),
        }
    }

    /// Writes row `t` (one token's vector) into `out`.
    pub fn row_into(&self, t: usize, out: &mut [f32]) {
        match self {
            Embedding::F32(w) => {
                let c = out.len();
                out.copy_from_slice(&w.data()[t * c..(t + 1) * c]);
            }
            Embedding::Packed(m) => m.unpack_row(t, out),
        }
    }

    /// True when read in place from the checkpoint file.
    pub fn is_mapped(&self) -> bool {
        match self {
            Embedding::F32(t) => t.is_mapped(),
            Embedding::Packed(m) => m.is_mapped(),
        }
    }
}

/// The weights of one transformer block, names as in the checkpoint.
pub type LayerWeights = Layer<Tensor, Linear>;

/// A loaded model's weights.
pub type Weights = Gpt2<Tensor, Linear, Embedding>;

/// One entry of [`Gpt2::params`] of [`Weights`].
pub type Param<'a> = layout::Param<&'a Tensor, &'a Linear, &'a Embedding>;

impl LayerWeights {
    /// The four matrices, in checkpoint order.
    pub fn matrices(&self) -> [&Linear; 4] {
        [&self.attn_w, &self.attn_proj_w, &self.fc_w, &self.fc_proj_w]
    }
}

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
        let mut loader = Loader {
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

impl Source for Loader<'_> {
    type Vector = Tensor;
    type Matrix = Linear;
    type Embedding = Embedding;

    fn vector(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.tensor(name, shape)
    }

    fn matrix(&mut self, name: &str, k: usize, n: usize) -> Result<Linear> {
        self.linear(name, k, n)
    }

    fn embedding(&mut self, name: &str, rows: usize, cols: usize) -> Result<Embedding> {
        Ok(match self.packed(name, rows, cols)? {
            Some(m) => Embedding::Packed(m),
            None => Embedding::F32(self.tensor(name, &[rows, cols])?),
        })
    }
}

impl Loader<'_> {
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

    /// A Conv1D matrix `[k, n]`, stored as such or packed.
    fn linear(&self, name: &str, k: usize, n: usize) -> Result<Linear> {
        Ok(match self.packed(name, n, k)? {
            Some(m) => Linear::Packed(m),
            None => Linear::Conv1D(self.tensor(name, &[k, n])?),
        })
    }
}

impl Loader<'_> {
    /// Every tensor of the model, then the tied head's check.
    fn load_all(&mut self) -> Result<Weights> {
        let weights = Weights::build(self.config, self)?;
        if let Embedding::F32(wte) = &weights.wte {
            self.check_tied_head(wte)?;
        }
        Ok(weights)
    }

    /// `NAME.packed` (and `NAME.scales`) as a `[rows, cols]` packed matrix,
    /// when the file has them.
    fn packed(&self, name: &str, rows: usize, cols: usize) -> Result<Option<PackedMatrix>> {
        let full = format!("{}{}.packed", self.prefix, name);
        let Ok(view) = self.st.tensor(&full) else {
            return Ok(None);
        };
        let err = |reason: String| ModelError::Tensor {
            path: self.path.to_path_buf(),
            tensor: full.clone(),
            reason,
        };
        let format = Format::from_dtype(view.dtype()).ok_or_else(|| {
            err(format!(
                "dtype {:?} is not a packed format (f16, bf16, i8 for q8_0, u8 for q4_0)",
                view.dtype()
            ))
        })?;
        if view.shape() != [rows, format.stored_cols(cols)]
            || (format.is_blocked() && !cols.is_multiple_of(BLOCK))
        {
            return Err(err(format!(
                "shape {:?} does not match {} of a {rows}x{cols} matrix ({})",
                view.shape(),
                format.name(),
                describe(self.config)
            )));
        }
        let bytes = view.data();
        let mapped = self.map.and_then(|map| {
            Storage::mapped(
                map,
                bytes.as_ptr() as usize - map.as_ptr() as usize,
                bytes.len(),
            )
        });
        let data = mapped.unwrap_or_else(|| Storage::owned(bytes.to_vec()));
        let scales = if format.is_blocked() {
            self.tensor(&format!("{name}.scales"), &[rows, cols / BLOCK])?
                .storage
        } else {
            Storage::owned(Vec::new())
        };
        PackedMatrix::from_parts(format, rows, cols, data, scales)
            .map(Some)
            .map_err(err)
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
        let data = match view.dtype() {
            Dtype::F32 => {
                if let Some(map) = self.map {
                    let offset = bytes.as_ptr() as usize - map.as_ptr() as usize;
                    if let Some(t) = Tensor::mapped(map, offset, shape) {
                        return Ok(t);
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

pub use crate::layout::tensor_shapes;
