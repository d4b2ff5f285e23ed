//! The GPT-2 forward pass for inference (Radford et al. 2019, "Language
//! Models are Unsupervised Multitask Learners"): token + position embedding,
//! `n_layer` pre-LayerNorm blocks of causal self-attention and a GELU MLP,
//! a final LayerNorm, and the LM head tied to the token embedding.

use crate::cache::KvCache;
use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::kernels::attention::{cached_attention_forward, scores_per_task, SegmentRows};
use crate::kernels::packed::packed_matmul;
use crate::kernels::{gelu_forward, layernorm_forward, linear_forward, lm_head_forward, Dest};
use crate::weights::{CheckpointFiles, Embedding, LayerWeights, Weights};
use std::path::Path;

pub struct Model {
    config: Config,
    weights: Weights,
}

/// The new tokens of several sequences, each bound to a cache slot, laid
/// out in one flat array. Reusable: `clear` keeps the allocations, so a
/// decode loop builds its batch without touching the heap.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    tokens: Vec<u32>,
    /// (cache slot, number of tokens) per sequence, in row order.
    seqs: Vec<(usize, usize)>,
}

impl Batch {
    pub fn single(slot: usize, tokens: &[u32]) -> Batch {
        let mut b = Batch::default();
        b.push(slot, tokens);
        b
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
        self.seqs.clear();
    }

    pub fn push(&mut self, slot: usize, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
        self.seqs.push((slot, tokens.len()));
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// (slot, tokens) of each sequence.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &[u32])> {
        let mut at = 0;
        self.seqs.iter().map(move |&(slot, n)| {
            at += n;
            (slot, &self.tokens[at - n..at])
        })
    }
}

/// Which positions the forward pass produces final hidden states for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The last new position of each segment (generation: the LM head is a
    /// third of the work, and only the next token is needed).
    Last,
    /// Every new position (scoring).
    All,
}

/// Activation buffers, sized for the largest batch seen and then reused, so
/// a decode step allocates nothing.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    ln: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    fc: Vec<f32>,
    hidden: Vec<f32>,
    scores: Vec<f32>,
    logits: Vec<f32>,
    /// Per-slab partial sums of the few-row matrix products.
    partials: Vec<f32>,
    segments: Vec<SegmentRows>,
    hidden_rows: usize,
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

impl Scratch {
    /// Buffers for `batch`, and where each of its sequences sits in the
    /// rows and in the cache.
    fn plan(&mut self, cfg: &Config, batch: &Batch, cache: &KvCache) {
        let max_rows = batch.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        self.ensure(cfg, batch.rows(), batch.len(), max_rows, cache.capacity());
        self.segments.clear();
        let mut row0 = 0;
        for (slot, tokens) in batch.iter() {
            self.segments.push(SegmentRows {
                slot,
                row0,
                rows: tokens.len(),
                past: cache.len(slot),
            });
            row0 += tokens.len();
        }
    }

    fn ensure(
        &mut self,
        config: &Config,
        rows: usize,
        segments: usize,
        max_rows: usize,
        capacity: usize,
    ) {
        let c = config.n_embd;
        grow(&mut self.x, rows * c);
        grow(&mut self.ln, rows * c);
        grow(&mut self.qkv, rows * 3 * c);
        grow(&mut self.att, rows * c);
        grow(&mut self.fc, rows * 4 * c);
        grow(&mut self.hidden, rows * c);
        grow(
            &mut self.scores,
            segments * config.n_head * scores_per_task(max_rows, capacity),
        );
    }

    /// The final (LayerNormed) hidden states of the last forward pass,
    /// `[rows, C]`.
    pub fn hidden(&self, c: usize) -> &[f32] {
        &self.hidden[..self.hidden_rows * c]
    }
}

impl Model {
    /// Loads a Hugging Face checkpoint directory.
    pub fn load_dir(dir: &Path) -> Result<Model> {
        let files = CheckpointFiles::in_dir(dir)?;
        let config = Config::from_json_file(&files.config)?;
        let weights = Weights::load(&files.weights, &config)?;
        Ok(Model { config, weights })
    }

    /// Loads a llama.cpp GPT-2 GGUF file (see [`crate::gguf::gpt2`]).
    pub fn load_gguf(path: &Path) -> Result<Model> {
        let (config, weights) = crate::gguf::gpt2::load(path)?;
        Ok(Model { config, weights })
    }

    /// A model from a `config.json` and a `model.safetensors` held in memory
    /// (the default model built into the binary).
    pub fn from_memory(config_json: &str, weights: &[u8]) -> Result<Model> {
        let name = Path::new("built-in model");
        let config = Config::from_json_str(config_json, name)?;
        let weights = Weights::from_bytes(name, weights, &config)?;
        Ok(Model { config, weights })
    }

    /// A model from weights already in memory; the caller guarantees that
    /// `weights` has the shapes of `config`.
    pub fn from_parts(config: Config, weights: Weights) -> Model {
        Model { config, weights }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// A cache for `slots` sequences of up to the full context.
    pub fn new_cache(&self, slots: usize) -> KvCache {
        KvCache::new(&self.config, slots, self.config.n_ctx)
    }

    /// Runs the new tokens of every segment through the model, appending
    /// their keys and values to the cache, and leaves the final hidden states
    /// of the positions `output` asks for in `scratch.hidden()`. Returns how
    /// many rows that is.
    pub fn forward(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        scratch: &mut Scratch,
        output: Output,
    ) -> Result<usize> {
        self.validate(batch, cache)?;
        let cfg = &self.config;
        let c = cfg.n_embd;
        let rows = batch.rows();
        scratch.plan(cfg, batch, cache);
        self.embed(batch, cache, &mut scratch.x);
        for (l, w) in self.weights.layers.iter().enumerate() {
            self.block(l, w, rows, cache, scratch);
        }
        for (slot, tokens) in batch.iter() {
            cache.advance(slot, tokens.len());
        }
        let out_rows = self.gather_output_rows(scratch, rows, output);
        let s = &mut *scratch;
        layernorm_forward(
            &mut s.hidden,
            &s.ln,
            self.weights.ln_f_w.data(),
            self.weights.ln_f_b.data(),
            out_rows,
            c,
            None,
        );
        s.hidden_rows = out_rows;
        Ok(out_rows)
    }

    /// Transformer block `l` over the batch's `rows` positions, in place on
    /// the residual stream `s.x`: `x += attn(ln_1(x))`, then
    /// `x += mlp(ln_2(x))`; the block's keys and values go into the cache.
    fn block(&self, l: usize, w: &LayerWeights, rows: usize, cache: &mut KvCache, s: &mut Scratch) {
        let (c, n_head) = (self.config.n_embd, self.config.n_head);
        layernorm_forward(
            &mut s.ln,
            &s.x,
            w.ln_1_w.data(),
            w.ln_1_b.data(),
            rows,
            c,
            None,
        );
        linear_forward(
            &mut s.qkv,
            &s.ln,
            &w.attn_w,
            w.attn_b.data(),
            rows,
            c,
            3 * c,
            Dest::Overwrite,
            &mut s.partials,
        );
        cached_attention_forward(
            &mut s.att,
            &s.qkv,
            cache,
            l,
            &s.segments,
            &mut s.scores,
            n_head,
            c,
        );
        linear_forward(
            &mut s.x,
            &s.att,
            &w.attn_proj_w,
            w.attn_proj_b.data(),
            rows,
            c,
            c,
            Dest::AddTo,
            &mut s.partials,
        );
        layernorm_forward(
            &mut s.ln,
            &s.x,
            w.ln_2_w.data(),
            w.ln_2_b.data(),
            rows,
            c,
            None,
        );
        linear_forward(
            &mut s.fc,
            &s.ln,
            &w.fc_w,
            w.fc_b.data(),
            rows,
            c,
            4 * c,
            Dest::Overwrite,
            &mut s.partials,
        );
        gelu_forward(&mut s.fc[..rows * 4 * c], 4 * c);
        linear_forward(
            &mut s.x,
            &s.fc,
            &w.fc_proj_w,
            w.fc_proj_b.data(),
            rows,
            4 * c,
            c,
            Dest::AddTo,
            &mut s.partials,
        );
    }

    /// Logits of the next token for each sequence: `[sequences, vocab]`.
    pub fn next_token_logits<'s>(
        &self,
        batch: &Batch,
        cache: &mut KvCache,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        let rows = self.forward(batch, cache, scratch, Output::Last)?;
        let v = self.config.vocab_size;
        grow(&mut scratch.logits, rows * v);
        let s = &mut *scratch;
        self.lm_head(&s.hidden[..rows * self.config.n_embd], rows, &mut s.logits);
        Ok(&scratch.logits[..rows * v])
    }

    /// The tied LM head over `rows` final hidden states into `[rows, vocab]`.
    pub fn lm_head(&self, hidden: &[f32], rows: usize, logits: &mut [f32]) {
        let c = self.config;
        match &self.weights.wte {
            Embedding::F32(wte) => {
                lm_head_forward(logits, hidden, wte.data(), rows, c.n_embd, c.vocab_size)
            }
            Embedding::Packed(wte) => {
                logits[..rows * c.vocab_size].fill(0.0);
                packed_matmul(logits, hidden, wte, rows);
            }
        }
    }

    fn validate(&self, batch: &Batch, cache: &KvCache) -> Result<()> {
        for (i, (slot, tokens)) in batch.iter().enumerate() {
            if slot >= cache.slots() {
                return Err(ModelError::InvalidRequest(format!(
                    "cache slot {slot} does not exist ({} slots)",
                    cache.slots()
                )));
            }
            if batch.seqs[..i].iter().any(|o| o.0 == slot) {
                return Err(ModelError::InvalidRequest(format!(
                    "cache slot {slot} appears twice in one batch"
                )));
            }
            if tokens.is_empty() {
                return Err(ModelError::InvalidRequest(
                    "a sequence in the batch has no tokens".into(),
                ));
            }
            let len = cache.len(slot) + tokens.len();
            if len > cache.capacity() {
                return Err(ModelError::ContextOverflow {
                    len,
                    n_ctx: cache.capacity(),
                });
            }
            if let Some(&id) = tokens
                .iter()
                .find(|&&t| t as usize >= self.config.vocab_size)
            {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    vocab_size: self.config.vocab_size,
                });
            }
        }
        Ok(())
    }

    fn embed(&self, batch: &Batch, cache: &KvCache, x: &mut [f32]) {
        let c = self.config.n_embd;
        let wpe = self.weights.wpe.data();
        let mut rows = x.chunks_exact_mut(c);
        for (slot, tokens) in batch.iter() {
            let past = cache.len(slot);
            for (i, &t) in tokens.iter().enumerate() {
                let p = past + i;
                let row = rows.next().expect("invariant: x holds one row per token");
                self.weights.wte.row_into(t as usize, row);
                for (o, b) in row.iter_mut().zip(&wpe[p * c..(p + 1) * c]) {
                    *o += b;
                }
            }
        }
    }

    /// Copies the residual-stream rows to output into `scratch.ln` (free
    /// after the last layer) and returns their number.
    fn gather_output_rows(&self, scratch: &mut Scratch, rows: usize, output: Output) -> usize {
        let c = self.config.n_embd;
        match output {
            Output::All => {
                scratch.ln[..rows * c].copy_from_slice(&scratch.x[..rows * c]);
                rows
            }
            Output::Last => {
                for (k, seg) in scratch.segments.iter().enumerate() {
                    let last = seg.row0 + seg.rows - 1;
                    scratch.ln[k * c..(k + 1) * c]
                        .copy_from_slice(&scratch.x[last * c..(last + 1) * c]);
                }
                scratch.segments.len()
            }
        }
    }
}
