//! llama.cpp's GPT-2 GGUF (architecture `gpt2`, as its
//! `convert_hf_to_gguf.py` and `llama-quantize` write it) to and from
//! [`Weights`].
//!
//! llama.cpp names the tensors its own way (`blk.N.attn_qkv.weight` for
//! `h.N.attn.c_attn.weight`, see [`gguf_name`]) and stores each layer
//! matrix as PyTorch's `[out, in]`, the transpose of GPT-2's Conv1D, which
//! is the layout of a [`PackedMatrix`]. So f16 and bf16 matrices and f32
//! vectors are read in place from the memory map; q8_0 and q4_0 blocks are
//! split once into packed data and f32 scales; f32 matrices are transposed
//! once into the Conv1D layout; a q6_K tensor (llama-quantize's choice for
//! the tied embedding of a q4_0 file) is widened to f32, exactly.
//!
//! The file's tokenizer must be GPT-2's: every token and merge is compared
//! with the tokenizer this crate encodes with.

use super::{blocks, parse, GgmlType, Header, TensorInfo, Value, Writer};
use crate::config::{Config, END_OF_TEXT, GPT2_VOCAB_SIZE, LAYER_NORM_EPSILON};
use crate::error::{ModelError, Result};
use crate::layout;
use crate::packed::PackedMatrix;
use crate::storage::Storage;
use crate::weights::{tensor_shapes, transpose, Embedding, Linear, Param, Tensor, Weights};
use crate::Tokenizer;
use memmap2::Mmap;
use std::path::Path;
use std::sync::Arc;

const ARCH: &str = "gpt2";

/// Hugging Face's names for the parts of a layer, and llama.cpp's.
const LAYER_PARTS: [(&str, &str); 6] = [
    ("ln_1.", "attn_norm."),
    ("attn.c_attn.", "attn_qkv."),
    ("attn.c_proj.", "attn_output."),
    ("ln_2.", "ffn_norm."),
    ("mlp.c_fc.", "ffn_up."),
    ("mlp.c_proj.", "ffn_down."),
];

/// llama.cpp's name for the Hugging Face tensor `hf` (without the
/// `transformer.` prefix).
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "wte.weight" => return "token_embd.weight".into(),
        "wpe.weight" => return "position_embd.weight".into(),
        _ => {}
    }
    if let Some(rest) = hf.strip_prefix("ln_f.") {
        return format!("output_norm.{rest}");
    }
    if let Some((layer, rest)) = hf.strip_prefix("h.").and_then(|r| r.split_once('.')) {
        for (ours, theirs) in LAYER_PARTS {
            if let Some(leaf) = rest.strip_prefix(ours) {
                return format!("blk.{layer}.{theirs}{leaf}");
            }
        }
    }
    hf.to_string()
}

/// Whether `path` starts with GGUF's magic bytes.
pub fn is_gguf_file(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == super::MAGIC)
}

/// Loads a GPT-2 GGUF file: its shape from the metadata, its tokenizer
/// checked, its tensors memory-mapped.
pub fn load(path: &Path) -> Result<(Config, Weights)> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only; a file changed on disk while it is
    // loaded is outside what any loader can defend against.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    load_map(path, Arc::new(map))
}

/// A GGUF file held in memory, copied into an anonymous map (for fuzzing
/// and tests); `name` stands for the file in error messages.
pub fn from_bytes(name: &Path, bytes: &[u8]) -> Result<(Config, Weights)> {
    let mut map =
        memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|e| ModelError::io(name, e))?;
    map[..bytes.len()].copy_from_slice(bytes);
    let map = map.make_read_only().map_err(|e| ModelError::io(name, e))?;
    load_map(name, Arc::new(map))
}

fn load_map(path: &Path, map: Arc<Mmap>) -> Result<(Config, Weights)> {
    let bad = |reason: String| ModelError::Gguf {
        path: path.to_path_buf(),
        reason,
    };
    let header = parse(&map).map_err(bad)?;
    let config = config_of(&header).map_err(bad)?;
    config.validate(path)?;
    // Names are checked against the full list, so a block count no file
    // could hold is refused before that list is built.
    if config.n_layer > header.tensors.len() {
        return Err(bad(format!(
            "gpt2.block_count is {}, but the file holds only {} tensors",
            config.n_layer,
            header.tensors.len()
        )));
    }
    let mut source = Source {
        path,
        map: &map,
        header: &header,
    };
    source.check_names(&config)?;
    check_tokenizer(&header, config.vocab_size).map_err(bad)?;
    let weights = Weights::build(&config, &mut source)?;
    source.check_tied_head()?;
    Ok((config, weights))
}

/// The model's shape from the `gpt2.*` metadata and the embedding's rows.
fn config_of(h: &Header) -> Result<Config, String> {
    match h.get("general.architecture").map(|v| v.as_str()) {
        Some(Some(ARCH)) => {}
        Some(Some(other)) => {
            return Err(format!(
                "the architecture is `{other}` (general.architecture); this loader reads GPT-2 (`gpt2`) only"
            ))
        }
        _ => return Err("no general.architecture string; not a llama.cpp model file".into()),
    }
    let number = |key: &str| -> Result<usize, String> {
        let full = format!("{ARCH}.{key}");
        h.get(&full)
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("no integer `{full}` in the metadata"))
    };
    let embd = h
        .tensor("token_embd.weight")
        .ok_or("missing tensor `token_embd.weight`")?;
    let config = Config {
        vocab_size: embd.dims.get(1).map_or(0, |&d| d as usize),
        n_ctx: number("context_length")?,
        n_embd: number("embedding_length")?,
        n_layer: number("block_count")?,
        n_head: number("attention.head_count")?,
    };
    if h.get(&format!("{ARCH}.feed_forward_length")).is_some() {
        let ffn = number("feed_forward_length")?;
        if Some(ffn) != config.n_embd.checked_mul(4) {
            return Err(format!(
                "gpt2.feed_forward_length is {ffn}; GPT-2's MLP is 4 x embedding_length ({})",
                config.n_embd
            ));
        }
    }
    let eps_key = format!("{ARCH}.attention.layer_norm_epsilon");
    if let Some(v) = h.get(&eps_key) {
        let want = LAYER_NORM_EPSILON as f64;
        match v.as_f64() {
            Some(eps) if (eps - want).abs() <= want * 1e-3 => {}
            Some(eps) => {
                return Err(format!(
                    "{eps_key} is {eps}; this implementation computes GPT-2's {want}"
                ))
            }
            None => return Err(format!("{eps_key} is {v:?}, not a float")),
        }
    }
    Ok(config)
}

/// The embedded tokenizer must be GPT-2's, token for token and merge for
/// merge; the first difference is named.
fn check_tokenizer(h: &Header, vocab_size: usize) -> Result<(), String> {
    let text = |key: &str| h.get(key).and_then(Value::as_str);
    match text("tokenizer.ggml.model") {
        Some("gpt2") => {}
        Some(other) => {
            return Err(format!(
                "the tokenizer is `{other}` (tokenizer.ggml.model), not GPT-2's byte-level BPE (`gpt2`)"
            ))
        }
        None => return Err("no tokenizer.ggml.model; the file must carry GPT-2's tokenizer".into()),
    }
    if let Some(pre) = text("tokenizer.ggml.pre") {
        if pre != "gpt-2" {
            return Err(format!(
                "the pre-tokenizer is `{pre}` (tokenizer.ggml.pre), not GPT-2's (`gpt-2`)"
            ));
        }
    }
    let gpt2 = Tokenizer::gpt2();
    compare_strings(
        h,
        "tokenizer.ggml.tokens",
        "token",
        gpt2.byte_level_tokens(),
    )?;
    compare_strings(h, "tokenizer.ggml.merges", "merge", gpt2.merges())?;
    if vocab_size != GPT2_VOCAB_SIZE {
        return Err(format!(
            "token_embd.weight has {vocab_size} rows; GPT-2's tokenizer has {GPT2_VOCAB_SIZE} tokens"
        ));
    }
    if let Some(eos) = h.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64) {
        if eos != END_OF_TEXT as u64 {
            return Err(format!(
                "tokenizer.ggml.eos_token_id is {eos}, not <|endoftext|> ({END_OF_TEXT})"
            ));
        }
    }
    Ok(())
}

fn compare_strings(h: &Header, key: &str, what: &str, want: &[String]) -> Result<(), String> {
    let Some(items) = h.get(key).and_then(Value::as_array) else {
        return Err(format!(
            "no {key} array; the file must carry GPT-2's tokenizer"
        ));
    };
    if items.len() != want.len() {
        return Err(format!(
            "{key} holds {} entries; GPT-2's tokenizer has {}",
            items.len(),
            want.len()
        ));
    }
    for (i, (got, want)) in items.iter().zip(want).enumerate() {
        if got.as_str() != Some(want.as_str()) {
            return Err(format!(
                "{what} {i} is {got:?} ({key}), GPT-2's is {want:?}: not GPT-2's tokenizer"
            ));
        }
    }
    Ok(())
}

/// The tensors of a mapped GGUF file, answering by Hugging Face name.
struct Source<'a> {
    path: &'a Path,
    map: &'a Arc<Mmap>,
    header: &'a Header,
}

impl Source<'_> {
    fn err(&self, tensor: &str, reason: String) -> ModelError {
        ModelError::Tensor {
            path: self.path.to_path_buf(),
            tensor: tensor.to_string(),
            reason,
        }
    }

    /// Every tensor is one of GPT-2's (or the tied head `output.weight`).
    fn check_names(&self, config: &Config) -> Result<()> {
        let known: std::collections::HashSet<String> = tensor_shapes(config)
            .iter()
            .map(|(hf, _)| gguf_name(hf))
            .collect();
        for t in &self.header.tensors {
            if t.name == "output.weight" || known.contains(&t.name) {
                continue;
            }
            let layer = t
                .name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok());
            let reason = match layer {
                Some(i) if i >= config.n_layer => format!(
                    "belongs to layer {i}, beyond the {} that gpt2.block_count declares",
                    config.n_layer
                ),
                _ => "is not a tensor of GPT-2".into(),
            };
            return Err(self.err(&t.name, reason));
        }
        Ok(())
    }

    /// The tensor llama.cpp names for `hf`, with its bytes, its row-major
    /// shape checked against `shape`.
    fn find(&self, hf: &str, shape: &[usize]) -> Result<(&TensorInfo, &[u8])> {
        let name = gguf_name(hf);
        let info = self
            .header
            .tensor(&name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.to_path_buf(),
                tensor: name.clone(),
            })?;
        if info.shape() != shape {
            let mut dims: Vec<usize> = shape.to_vec();
            dims.reverse();
            return Err(self.err(
                &name,
                format!(
                    "dims {:?} do not match {dims:?} implied by the gpt2.* metadata",
                    info.dims
                ),
            ));
        }
        let bytes = self
            .header
            .tensor_bytes(self.map, info)
            .map_err(|e| self.err(&name, e))?;
        Ok((info, bytes))
    }

    fn offset(&self, bytes: &[u8]) -> usize {
        bytes.as_ptr() as usize - self.map.as_ptr() as usize
    }

    /// All values as f32 (in place when stored as f32 and aligned).
    fn f32_tensor(&self, info: &TensorInfo, bytes: &[u8], shape: &[usize]) -> Result<Tensor> {
        if info.ggml_type == GgmlType::F32 {
            if let Some(t) = Tensor::mapped(self.map, self.offset(bytes), shape) {
                return Ok(t);
            }
        }
        let values =
            blocks::dequantize(info.ggml_type, bytes).map_err(|e| self.err(&info.name, e))?;
        Ok(Tensor::from_vec(values, shape.to_vec()))
    }

    /// A `[rows, cols]` matrix in a type the packed kernels serve.
    fn packed(
        &self,
        info: &TensorInfo,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Option<Result<PackedMatrix>> {
        let format = info.ggml_type.packed_format()?;
        let (data, scales) = if format.is_blocked() {
            let (data, scales) = blocks::split_blocks(info.ggml_type, bytes);
            (Storage::owned(data), Storage::owned(scales))
        } else {
            // `bytes` lies inside the map (Header::tensor_bytes checked it).
            let data = Storage::mapped(self.map, self.offset(bytes), bytes.len())
                .unwrap_or_else(|| Storage::owned(bytes.to_vec()));
            (data, Storage::owned(Vec::new()))
        };
        Some(
            PackedMatrix::from_parts(format, rows, cols, data, scales)
                .map_err(|e| self.err(&info.name, e)),
        )
    }

    /// A stored `output.weight` must be the token embedding itself.
    fn check_tied_head(&self) -> Result<()> {
        let (Some(head), Some(embd)) = (
            self.header.tensor("output.weight"),
            self.header.tensor("token_embd.weight"),
        ) else {
            return Ok(());
        };
        let same = head.dims == embd.dims
            && head.ggml_type == embd.ggml_type
            && self.header.tensor_bytes(self.map, head).ok()
                == self.header.tensor_bytes(self.map, embd).ok();
        if same {
            return Ok(());
        }
        Err(self.err(
            "output.weight",
            "differs from token_embd.weight; GPT-2 ties the LM head to the token embedding \
             and this loader serves tied heads only (a current convert_hf_to_gguf.py writes \
             no output.weight for GPT-2)"
                .into(),
        ))
    }
}

impl layout::Source for Source<'_> {
    type Vector = Tensor;
    type Matrix = Linear;
    type Embedding = Embedding;

    fn vector(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (info, bytes) = self.find(name, shape)?;
        self.f32_tensor(info, bytes, shape)
    }

    fn matrix(&mut self, name: &str, k: usize, n: usize) -> Result<Linear> {
        let (info, bytes) = self.find(name, &[n, k])?;
        if let Some(m) = self.packed(info, bytes, n, k) {
            return m.map(Linear::Packed);
        }
        let rows =
            blocks::dequantize(info.ggml_type, bytes).map_err(|e| self.err(&info.name, e))?;
        Ok(Linear::Conv1D(Tensor::from_vec(
            transpose(&rows, n, k),
            vec![k, n],
        )))
    }

    fn embedding(&mut self, name: &str, rows: usize, cols: usize) -> Result<Embedding> {
        let (info, bytes) = self.find(name, &[rows, cols])?;
        if let Some(m) = self.packed(info, bytes, rows, cols) {
            return m.map(Embedding::Packed);
        }
        self.f32_tensor(info, bytes, &[rows, cols])
            .map(Embedding::F32)
    }
}

/// llama.cpp's `general.file_type` for a model whose matrices are `format`.
fn file_type(format: &str) -> u32 {
    match format {
        "f16" => 1,
        "q4_0" => 2,
        "q8_0" => 7,
        "bf16" => 32,
        _ => 0,
    }
}

/// A GGUF file of `weights` that llama.cpp loads as GPT-2: the metadata and
/// tokenizer its converter writes, the tensors under its names and in its
/// layout, quantized blocks with f16 scales.
pub fn to_gguf(config: &Config, weights: &Weights, name: &str) -> Result<Vec<u8>, String> {
    let mut w = Writer::default();
    let uint = |v: usize| Value::U32(v as u32);
    w.meta("general.architecture", Value::Str(ARCH.into()));
    w.meta("general.type", Value::Str("model".into()));
    w.meta("general.name", Value::Str(name.into()));
    w.meta("gpt2.block_count", uint(config.n_layer));
    w.meta("gpt2.context_length", uint(config.n_ctx));
    w.meta("gpt2.embedding_length", uint(config.n_embd));
    w.meta("gpt2.feed_forward_length", uint(4 * config.n_embd));
    w.meta("gpt2.attention.head_count", uint(config.n_head));
    w.meta(
        "gpt2.attention.layer_norm_epsilon",
        Value::F32(LAYER_NORM_EPSILON),
    );
    // The layer matrices' format names the file, as llama-quantize's does
    // (whose q4_0 keeps the embedding at q6_K).
    let format = weights
        .layers
        .first()
        .map_or("f32", |l| l.attn_w.format_name());
    w.meta("general.file_type", Value::U32(file_type(format)));
    w.meta("general.quantization_version", Value::U32(2));
    write_tokenizer(&mut w, config.vocab_size)?;
    for (hf, param) in weights.params() {
        let name = gguf_name(&hf);
        let (shape, ty, data) = match param {
            Param::Vector(t) => (t.shape().to_vec(), GgmlType::F32, le_bytes(t.data())),
            Param::Matrix(Linear::Conv1D(t)) => {
                let (k, n) = (t.shape()[0], t.shape()[1]);
                (
                    vec![n, k],
                    GgmlType::F32,
                    le_bytes(&transpose(t.data(), k, n)),
                )
            }
            Param::Embedding(Embedding::F32(t)) => {
                (t.shape().to_vec(), GgmlType::F32, le_bytes(t.data()))
            }
            Param::Matrix(Linear::Packed(m)) | Param::Embedding(Embedding::Packed(m)) => {
                let f = m.format();
                let data = if f.is_blocked() {
                    blocks::join_blocks(f, m.data(), m.scales())
                        .map_err(|e| format!("{hf}: {e}"))?
                } else {
                    m.data().to_vec()
                };
                (vec![m.rows(), m.cols()], GgmlType::from_format(f), data)
            }
        };
        w.tensor(&name, &shape, ty, data)?;
    }
    Ok(w.to_bytes())
}

/// GPT-2's tokenizer as llama.cpp's converter writes it.
fn write_tokenizer(w: &mut Writer, vocab_size: usize) -> Result<(), String> {
    if vocab_size != GPT2_VOCAB_SIZE {
        return Err(format!(
            "a GGUF carries its tokenizer, and this model's vocabulary of {vocab_size} is not GPT-2's {GPT2_VOCAB_SIZE}"
        ));
    }
    let gpt2 = Tokenizer::gpt2();
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::Str(s.clone())).collect());
    // 1 is llama.cpp's LLAMA_TOKEN_TYPE_NORMAL, 3 its CONTROL.
    let types = (0..GPT2_VOCAB_SIZE as u32)
        .map(|id| Value::I32(if gpt2.is_special(id) { 3 } else { 1 }))
        .collect();
    let eot = Value::U32(END_OF_TEXT);
    w.meta("tokenizer.ggml.model", Value::Str("gpt2".into()));
    w.meta("tokenizer.ggml.pre", Value::Str("gpt-2".into()));
    w.meta("tokenizer.ggml.tokens", strings(gpt2.byte_level_tokens()));
    w.meta("tokenizer.ggml.token_type", Value::Array(types));
    w.meta("tokenizer.ggml.merges", strings(gpt2.merges()));
    w.meta("tokenizer.ggml.bos_token_id", eot.clone());
    w.meta("tokenizer.ggml.eos_token_id", eot.clone());
    w.meta("tokenizer.ggml.unknown_token_id", eot);
    // A text is conditioned on <|endoftext|>, as this project scores it, so
    // llama.cpp prepends it; it appends nothing.
    w.meta("tokenizer.ggml.add_bos_token", Value::Bool(true));
    w.meta("tokenizer.ggml.add_eos_token", Value::Bool(false));
    Ok(())
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(gguf_name("h.3.attn.c_attn.weight"), "blk.3.attn_qkv.weight");
        assert_eq!(gguf_name("h.0.mlp.c_proj.bias"), "blk.0.ffn_down.bias");
        assert_eq!(gguf_name("ln_f.weight"), "output_norm.weight");
        assert_eq!(gguf_name("wpe.weight"), "position_embd.weight");
        let names: Vec<String> = tensor_shapes(&Config::GPT2)
            .iter()
            .map(|(n, _)| gguf_name(n))
            .collect();
        assert!(names.iter().all(|n| !n.starts_with("h.")));
        assert_eq!(names.len(), 4 + 12 * 12);
    }
}
