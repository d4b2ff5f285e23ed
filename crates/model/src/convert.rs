//! Converting loaded weights to another storage format and writing them as
//! `model.safetensors` (what `gpt2 quantize` does).
//!
//! The token embedding and the four matrices of every layer change format;
//! position embeddings, biases and LayerNorm parameters stay f32 (they are
//! a fraction of a percent of the bytes, and a position row or a bias is
//! read whole anyway).

use crate::packed::{Format, PackedMatrix, BLOCK};
use crate::weights::{Embedding, LayerWeights, Linear, Param, Tensor, Weights};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// Metadata key naming the storage format of a file's matrices.
pub const FORMAT_KEY: &str = "gpt2.weight_format";

/// `weights` with every matrix stored as `format` (`None`: f32, in the
/// Hugging Face layout). Errors name the matrix that cannot be packed.
pub fn convert(weights: &Weights, format: Option<Format>) -> Result<Weights, String> {
    let linear = |name: String, l: &Linear| -> Result<Linear, String> {
        match format {
            None => {
                let shape = match l {
                    Linear::Conv1D(t) => t.shape().to_vec(),
                    Linear::Packed(m) => vec![m.cols(), m.rows()],
                };
                Ok(Linear::Conv1D(Tensor::from_vec(
                    l.to_conv1d().into_owned(),
                    shape,
                )))
            }
            Some(f) => l
                .pack(f)
                .map(Linear::Packed)
                .map_err(|e| format!("{name}: {e}")),
        }
    };
    let vocab = weights.wte.to_f32();
    let c = weights.wpe.shape()[1];
    let rows = vocab.len() / c.max(1);
    let wte = match format {
        None => Embedding::F32(Tensor::from_vec(vocab.into_owned(), vec![rows, c])),
        Some(f) => Embedding::Packed(
            PackedMatrix::pack(f, &vocab, rows, c).map_err(|e| format!("wte.weight: {e}"))?,
        ),
    };
    let layers = weights
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Ok(LayerWeights {
                attn_w: linear(format!("h.{i}.attn.c_attn.weight"), &l.attn_w)?,
                attn_proj_w: linear(format!("h.{i}.attn.c_proj.weight"), &l.attn_proj_w)?,
                fc_w: linear(format!("h.{i}.mlp.c_fc.weight"), &l.fc_w)?,
                fc_proj_w: linear(format!("h.{i}.mlp.c_proj.weight"), &l.fc_proj_w)?,
                ..l.clone()
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Weights {
        wte,
        layers,
        ..weights.clone()
    })
}

/// One tensor to write: name, dtype, shape, little-endian bytes (borrowed
/// where the tensor already is those bytes).
pub struct Entry<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
}

/// The little-endian bytes of `data`: the floats themselves on a
/// little-endian machine, a converted copy elsewhere.
pub fn f32_le_bytes(data: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        // SAFETY: f32 has no padding and any byte pattern is a valid u8;
        // the slice covers exactly `data`'s memory, borrowed for its lifetime.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data))
        })
    } else {
        Cow::Owned(data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

fn f32_entry(name: String, t: &Tensor) -> Entry<'_> {
    Entry {
        name,
        dtype: Dtype::F32,
        shape: t.shape().to_vec(),
        bytes: f32_le_bytes(t.data()),
    }
}

fn packed_entries<'a>(name: &str, m: &'a PackedMatrix) -> Vec<Entry<'a>> {
    let f = m.format();
    let mut out = vec![Entry {
        name: format!("{name}.packed"),
        dtype: f.dtype(),
        shape: vec![m.rows(), f.stored_cols(m.cols())],
        bytes: Cow::Borrowed(m.data()),
    }];
    if f.is_blocked() {
        out.push(Entry {
            name: format!("{name}.scales"),
            dtype: Dtype::F32,
            shape: vec![m.rows(), m.cols() / BLOCK],
            bytes: f32_le_bytes(m.scales()),
        });
    }
    out
}

/// The bytes of a `model.safetensors` holding `weights`, with the storage
/// format recorded in the metadata under [`FORMAT_KEY`].
pub fn to_safetensors(weights: &Weights, format_name: &str) -> Result<Vec<u8>, String> {
    let mut entries = Vec::new();
    for (name, param) in weights.params() {
        match param {
            Param::Vector(t)
            | Param::Matrix(Linear::Conv1D(t))
            | Param::Embedding(Embedding::F32(t)) => entries.push(f32_entry(name, t)),
            Param::Matrix(Linear::Packed(m)) | Param::Embedding(Embedding::Packed(m)) => {
                entries.extend(packed_entries(&name, m))
            }
        }
    }
    write_safetensors(&entries, &[(FORMAT_KEY, format_name)])
}

/// The bytes of a safetensors file holding `entries`, its metadata
/// `format: pt` (what `transformers` expects) and `extra`: the one writer
/// of the project's safetensors files.
pub fn write_safetensors(entries: &[Entry], extra: &[(&str, &str)]) -> Result<Vec<u8>, String> {
    let (views, metadata) = views_and_metadata(entries, extra)?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// [`write_safetensors`] straight into the file at `path`, atomically,
/// tensor by tensor: no copy of the whole file is made in memory.
pub fn write_safetensors_file(
    path: &Path,
    entries: &[Entry],
    extra: &[(&str, &str)],
) -> Result<(), String> {
    let (views, metadata) = views_and_metadata(entries, extra)?;
    crate::atomic::write_atomic_with(path, |tmp| {
        // serialize_to_file writes through a temporary file of its own,
        // created owner-only (0600), and renames it onto `tmp`. The model
        // gets the permissions every other file gets from File::create
        // (0666 less the umask), so that another account can serve it.
        let permissions = std::fs::File::create(tmp)?.metadata()?.permissions();
        safetensors::serialize_to_file(views, Some(metadata), tmp)
            .map_err(std::io::Error::other)?;
        std::fs::set_permissions(tmp, permissions)
    })
    .map_err(|e| format!("{}: {e}", path.display()))
}

type Views<'a> = Vec<(String, TensorView<'a>)>;

fn views_and_metadata<'a>(
    entries: &'a [Entry],
    extra: &[(&str, &str)],
) -> Result<(Views<'a>, HashMap<String, String>), String> {
    let views = entries
        .iter()
        .map(|e| {
            TensorView::new(e.dtype, e.shape.clone(), &e.bytes)
                .map(|v| (e.name.clone(), v))
                .map_err(|err| format!("{}: {err}", e.name))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Ok((views, metadata))
}

/// The storage format of a model's matrices ("f32", "f16", "q8_0", ...),
/// or "mixed" when they differ.
pub fn format_name(weights: &Weights) -> &'static str {
    let head = match &weights.wte {
        Embedding::F32(_) => "f32",
        Embedding::Packed(m) => m.format().name(),
    };
    let same = weights
        .layers
        .iter()
        .flat_map(|l| l.matrices())
        .all(|m| m.format_name() == head);
    if same {
        head
    } else {
        "mixed"
    }
}

/// Bytes of weights a decode step streams (every matrix, the LM head, and
/// the small f32 tensors), for bandwidth bounds.
pub fn weight_bytes(weights: &Weights) -> usize {
    let linear = |l: &Linear| match l {
        Linear::Conv1D(t) => 4 * t.data().len(),
        Linear::Packed(m) => m.stored_bytes(),
    };
    let head = match &weights.wte {
        Embedding::F32(t) => 4 * t.data().len(),
        Embedding::Packed(m) => m.stored_bytes(),
    };
    let small = |t: &Tensor| 4 * t.data().len();
    head + weights
        .layers
        .iter()
        .map(|l| {
            l.matrices().into_iter().map(linear).sum::<usize>()
                + [
                    &l.ln_1_w,
                    &l.ln_1_b,
                    &l.attn_b,
                    &l.attn_proj_b,
                    &l.ln_2_w,
                    &l.ln_2_b,
                    &l.fc_b,
                    &l.fc_proj_b,
                ]
                .into_iter()
                .map(small)
                .sum::<usize>()
        })
        .sum::<usize>()
        + small(&weights.ln_f_w)
        + small(&weights.ln_f_b)
}
