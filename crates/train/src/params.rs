//! All parameters (or all their gradients, or an optimizer moment) in one
//! flat buffer, llm.c style, in the checkpoint's tensor order and layout
//! (Conv1D matrices in x out), with named views into it.

use gpt2_model::weights::tensor_shapes;
use gpt2_model::Config;

/// One transformer block's tensors, in checkpoint order.
pub struct Layer<S> {
    pub ln_1_w: S,
    pub ln_1_b: S,
    /// [C, 3C]
    pub attn_w: S,
    pub attn_b: S,
    /// [C, C]
    pub attn_proj_w: S,
    pub attn_proj_b: S,
    pub ln_2_w: S,
    pub ln_2_b: S,
    /// [C, 4C]
    pub fc_w: S,
    pub fc_b: S,
    /// [4C, C]
    pub fc_proj_w: S,
    pub fc_proj_b: S,
}

/// Views of a flat buffer: `S` is `&[f32]` or `&mut [f32]`.
pub struct Params<S> {
    /// [V, C], also the LM head.
    pub wte: S,
    /// [n_ctx, C]
    pub wpe: S,
    pub layers: Vec<Layer<S>>,
    pub ln_f_w: S,
    pub ln_f_b: S,
}

/// The sizes of every tensor, in buffer order.
pub fn sizes(config: &Config) -> Vec<usize> {
    tensor_shapes(config)
        .iter()
        .map(|(_, s)| s.iter().product())
        .collect()
}

/// Which tensors weight decay applies to: the 2-D ones (matrices and
/// embeddings), not biases or LayerNorm parameters.
pub fn decayed(config: &Config) -> Vec<bool> {
    tensor_shapes(config)
        .iter()
        .map(|(_, s)| s.len() == 2)
        .collect()
}

fn assemble<S>(mut parts: impl Iterator<Item = S>, n_layer: usize) -> Params<S> {
    let mut next = || {
        parts
            .next()
            .expect("invariant: one slice per tensor of the layout")
    };
    let wte = next();
    let wpe = next();
    let layers = (0..n_layer)
        .map(|_| Layer {
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
    Params {
        wte,
        wpe,
        layers,
        ln_f_w: next(),
        ln_f_b: next(),
    }
}

/// Read-only views of `buf`, which holds `config.num_parameters()` floats.
pub fn views<'a>(buf: &'a [f32], config: &Config) -> Params<&'a [f32]> {
    let mut rest = buf;
    let parts = sizes(config).into_iter().map(move |n| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head
    });
    assemble(parts, config.n_layer)
}

/// Mutable views of `buf`, which holds `config.num_parameters()` floats.
pub fn views_mut<'a>(buf: &'a mut [f32], config: &Config) -> Params<&'a mut [f32]> {
    let mut rest = buf;
    let parts = sizes(config).into_iter().map(move |n| {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        head
    });
    assemble(parts, config.n_layer)
}
