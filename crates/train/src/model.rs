//! A GPT-2 being trained: the parameters and their gradients in flat
//! buffers, the activations of one batch, and the forward and backward
//! passes over them (llm.c's `gpt2_forward` / `gpt2_backward`).

use crate::params::{views, views_mut, Layer, SplitFront};
use gpt2_model::kernels::attention::{attention_backward, attention_forward, AttentionShape};
use gpt2_model::kernels::{
    encoder_backward, encoder_forward, gelu_backward, gelu_forward, layernorm_backward,
    layernorm_forward, lm_head_crossentropy, lm_head_forward, matmul_backward, Dest, HeadGrads,
    RowStats,
};
use gpt2_model::layout::Source;
use gpt2_model::weights::{Embedding, Linear, Param, Tensor, Weights};
use gpt2_model::Config;

/// `out = inp @ weight + bias` for `n` rows (no accumulation; the
/// few-row scratch the inference path needs is never used at training
/// sizes).
fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    in_dim: usize,
    out_dim: usize,
) {
    gpt2_model::kernels::matmul_forward(
        out,
        inp,
        weight,
        bias,
        n,
        in_dim,
        out_dim,
        Dest::Overwrite,
        &mut Vec::new(),
    );
}

/// LayerNorm of every row of `x` (width `c`) into `out`, keeping each
/// row's mean and reciprocal standard deviation for the backward pass.
fn layernorm_saving(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    c: usize,
) {
    let rows = mean.len();
    layernorm_forward(out, x, w, b, rows, c, Some(RowStats { mean, rstd }));
}

/// Transformer block `w` over the residual stream `x` (`n` rows), keeping
/// in `a` what its backward pass needs: `res2 = x + attn(ln_1(x))`, then
/// `res3 = res2 + mlp(ln_2(res2))`.
fn block_forward(a: &mut LayerActs, x: &[f32], w: &Layer<&[f32]>, n: usize, shape: AttentionShape) {
    let c = shape.c;
    layernorm_saving(
        &mut a.ln1,
        &mut a.ln1_mean,
        &mut a.ln1_rstd,
        x,
        w.ln_1_w,
        w.ln_1_b,
        c,
    );
    matmul_forward(&mut a.qkv, &a.ln1, w.attn_w, w.attn_b, n, c, 3 * c);
    attention_forward(&mut a.atty, &mut a.att, &a.qkv, shape);
    matmul_forward(&mut a.res2, &a.atty, w.attn_proj_w, w.attn_proj_b, n, c, c);
    a.res2.iter_mut().zip(x).for_each(|(r, x)| *r += x);
    layernorm_saving(
        &mut a.ln2,
        &mut a.ln2_mean,
        &mut a.ln2_rstd,
        &a.res2,
        w.ln_2_w,
        w.ln_2_b,
        c,
    );
    matmul_forward(&mut a.fch, &a.ln2, w.fc_w, w.fc_b, n, c, 4 * c);
    a.fch_gelu.copy_from_slice(&a.fch);
    gelu_forward(&mut a.fch_gelu, 4 * c);
    matmul_forward(
        &mut a.res3,
        &a.fch_gelu,
        w.fc_proj_w,
        w.fc_proj_b,
        n,
        4 * c,
        c,
    );
    a.res3.iter_mut().zip(&a.res2).for_each(|(r, x)| *r += x);
}

/// The backward pass of [`block_forward`]: from the gradient of its
/// output in `d.dres` to the gradient of its input, in place, adding into
/// the block's parameter gradients `gw`.
fn block_backward(
    d: &mut ActGrads,
    a: &LayerActs,
    x: &[f32],
    w: &Layer<&[f32]>,
    gw: &mut Layer<&mut [f32]>,
    n: usize,
    shape: AttentionShape,
) {
    let c = shape.c;
    d.dfch_gelu.fill(0.0);
    matmul_backward(
        &mut d.dfch_gelu,
        gw.fc_proj_w,
        gw.fc_proj_b,
        &d.dres,
        &a.fch_gelu,
        w.fc_proj_w,
        n,
        4 * c,
        c,
    );
    d.dfch.fill(0.0);
    gelu_backward(&mut d.dfch, &a.fch, &d.dfch_gelu);
    d.dln.fill(0.0);
    matmul_backward(
        &mut d.dln,
        gw.fc_w,
        gw.fc_b,
        &d.dfch,
        &a.ln2,
        w.fc_w,
        n,
        c,
        4 * c,
    );
    layernorm_backward(
        &mut d.dres,
        gw.ln_2_w,
        gw.ln_2_b,
        &d.dln,
        &a.res2,
        w.ln_2_w,
        &a.ln2_mean,
        &a.ln2_rstd,
        c,
    );
    d.datty.fill(0.0);
    matmul_backward(
        &mut d.datty,
        gw.attn_proj_w,
        gw.attn_proj_b,
        &d.dres,
        &a.atty,
        w.attn_proj_w,
        n,
        c,
        c,
    );
    d.dqkv.fill(0.0);
    attention_backward(&mut d.dqkv, &mut d.datt, &d.datty, &a.qkv, &a.att, shape);
    d.dln.fill(0.0);
    matmul_backward(
        &mut d.dln,
        gw.attn_w,
        gw.attn_b,
        &d.dqkv,
        &a.ln1,
        w.attn_w,
        n,
        c,
        3 * c,
    );
    layernorm_backward(
        &mut d.dres,
        gw.ln_1_w,
        gw.ln_1_b,
        &d.dln,
        x,
        w.ln_1_w,
        &a.ln1_mean,
        &a.ln1_rstd,
        c,
    );
}

/// What one layer's backward pass needs from its forward pass.
struct LayerActs {
    ln1: Vec<f32>,
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    atty: Vec<f32>,
    /// The residual stream after attention.
    res2: Vec<f32>,
    ln2: Vec<f32>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
    fch: Vec<f32>,
    fch_gelu: Vec<f32>,
    /// The residual stream after the MLP: the layer's output.
    res3: Vec<f32>,
}

impl LayerActs {
    fn new(n: usize, c: usize, att: usize) -> LayerActs {
        let z = |len| vec![0f32; len];
        LayerActs {
            ln1: z(n * c),
            ln1_mean: z(n),
            ln1_rstd: z(n),
            qkv: z(n * 3 * c),
            att: z(att),
            atty: z(n * c),
            res2: z(n * c),
            ln2: z(n * c),
            ln2_mean: z(n),
            ln2_rstd: z(n),
            fch: z(n * 4 * c),
            fch_gelu: z(n * 4 * c),
            res3: z(n * c),
        }
    }
}

/// Gradient buffers for activations, reused layer after layer.
struct ActGrads {
    dres: Vec<f32>,
    dln: Vec<f32>,
    dqkv: Vec<f32>,
    datty: Vec<f32>,
    dfch: Vec<f32>,
    dfch_gelu: Vec<f32>,
    datt: Vec<f32>,
}

pub struct TrainModel {
    pub config: Config,
    /// All parameters, in checkpoint order (see `params`).
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    batch: usize,
    seq: usize,
    tokens: Vec<u32>,
    encoded: Vec<f32>,
    layers: Vec<LayerActs>,
    lnf: Vec<f32>,
    lnf_mean: Vec<f32>,
    lnf_rstd: Vec<f32>,
    /// One chunk of the LM head's probabilities (empty until the LM head
    /// runs; see `lm_head_crossentropy`).
    probs: Vec<f32>,
    losses: Vec<f32>,
    d: ActGrads,
}

/// Copies of consecutive pieces of a flat parameter buffer as inference
/// tensors, in the order [`Weights::build`] asks for them.
struct Copies<'a>(&'a [f32]);

impl Copies<'_> {
    fn take(&mut self, shape: Vec<usize>) -> Tensor {
        let head = self.0.split_front(shape.iter().product());
        Tensor::from_vec(head.to_vec(), shape)
    }
}

impl Source for Copies<'_> {
    type Vector = Tensor;
    type Matrix = Linear;
    type Embedding = Embedding;
    fn vector(&mut self, _: &str, shape: &[usize]) -> gpt2_model::Result<Tensor> {
        Ok(self.take(shape.to_vec()))
    }
    fn matrix(&mut self, _: &str, k: usize, n: usize) -> gpt2_model::Result<Linear> {
        Ok(Linear::Conv1D(self.take(vec![k, n])))
    }
    fn embedding(&mut self, _: &str, rows: usize, cols: usize) -> gpt2_model::Result<Embedding> {
        Ok(Embedding::F32(self.take(vec![rows, cols])))
    }
}

/// Inference weights holding a copy of `params` (for sampling during training).
pub fn weights_from_params(config: &Config, params: &[f32]) -> Weights {
    // invariant: Copies never fails; `params` holds `config.num_parameters()`
    // floats (split_at checks it).
    Weights::build(config, &mut Copies(params)).unwrap_or_else(|_| unreachable!())
}

/// The parameters of loaded weights, flattened in checkpoint order (packed
/// matrices widened back to f32).
pub fn params_from_weights(w: &Weights) -> Vec<f32> {
    let mut out = Vec::new();
    for (_, param) in w.params() {
        match param {
            Param::Vector(t) => out.extend_from_slice(t.data()),
            Param::Matrix(l) => out.extend_from_slice(&l.to_conv1d()),
            Param::Embedding(e) => out.extend_from_slice(&e.to_f32()),
        }
    }
    out
}

impl TrainModel {
    /// A model for batches of `batch` sequences of `seq` tokens.
    pub fn new(config: Config, params: Vec<f32>, batch: usize, seq: usize) -> TrainModel {
        assert_eq!(
            params.len(),
            config.num_parameters(),
            "parameter buffer size"
        );
        assert!(seq <= config.n_ctx && batch > 0 && seq > 0, "batch shape");
        let (n, c) = (batch * seq, config.n_embd);
        let att = batch * config.n_head * seq * seq;
        let z = |len| vec![0f32; len];
        TrainModel {
            grads: z(params.len()),
            params,
            batch,
            seq,
            tokens: vec![0; n],
            encoded: z(n * c),
            layers: (0..config.n_layer)
                .map(|_| LayerActs::new(n, c, att))
                .collect(),
            lnf: z(n * c),
            lnf_mean: z(n),
            lnf_rstd: z(n),
            probs: Vec::new(),
            losses: z(n),
            d: ActGrads {
                dres: z(n * c),
                dln: z(n * c),
                dqkv: z(n * 3 * c),
                datty: z(n * c),
                dfch: z(n * 4 * c),
                dfch_gelu: z(n * 4 * c),
                datt: z(att),
            },
            config,
        }
    }

    fn shape(&self) -> AttentionShape {
        AttentionShape {
            b: self.batch,
            t: self.seq,
            c: self.config.n_embd,
            n_head: self.config.n_head,
        }
    }

    /// Runs the batch through the embeddings, the blocks and the final
    /// LayerNorm, and returns the final hidden states, `[batch * seq, C]`
    /// (what a head reads: the LM head, or a classifier's score).
    pub fn forward_hidden(&mut self, tokens: &[u32]) -> &[f32] {
        let cfg = self.config;
        let (n, c) = (self.batch * self.seq, cfg.n_embd);
        assert!(tokens.len() == n, "forward: batch has the wrong size");
        assert!(
            tokens.iter().all(|&t| (t as usize) < cfg.vocab_size),
            "forward: token out of the vocabulary"
        );
        self.tokens.copy_from_slice(tokens);
        let p = views(&self.params, &cfg);
        let shape = self.shape();
        encoder_forward(&mut self.encoded, tokens, p.wte, p.wpe, self.seq, c);
        for l in 0..cfg.n_layer {
            let (done, rest) = self.layers.split_at_mut(l);
            let x = if l == 0 {
                &self.encoded
            } else {
                &done[l - 1].res3
            };
            block_forward(&mut rest[0], x, &p.layers[l], n, shape);
        }
        let last = &self.layers[cfg.n_layer - 1].res3;
        layernorm_saving(
            &mut self.lnf,
            &mut self.lnf_mean,
            &mut self.lnf_rstd,
            last,
            p.ln_f_w,
            p.ln_f_b,
            c,
        );
        &self.lnf
    }

    /// Runs the batch and returns the mean cross-entropy of `targets`
    /// (evaluation: no gradients).
    pub fn forward(&mut self, tokens: &[u32], targets: &[u32]) -> f32 {
        self.head_pass(tokens, targets, false)
    }

    /// Runs the batch, returns the mean cross-entropy of `targets`, and adds
    /// its gradient to `grads` (call `zero_grads` first, or accumulate over
    /// micro-batches).
    pub fn forward_backward(&mut self, tokens: &[u32], targets: &[u32]) -> f32 {
        let loss = self.head_pass(tokens, targets, true);
        self.backward_body();
        loss
    }

    /// The body's forward pass, then the fused LM head and cross-entropy;
    /// with `backward`, the head's gradients land in `grads.wte` and
    /// `d.dln` for `backward_body`.
    fn head_pass(&mut self, tokens: &[u32], targets: &[u32], backward: bool) -> f32 {
        let (n, c, v) = (
            self.batch * self.seq,
            self.config.n_embd,
            self.config.vocab_size,
        );
        assert!(targets.len() == n, "forward: batch has the wrong size");
        assert!(
            targets.iter().all(|&t| (t as usize) < v),
            "forward: token out of the vocabulary"
        );
        self.forward_hidden(tokens);
        let wte = views(&self.params, &self.config).wte;
        let grads = backward.then(|| HeadGrads {
            dhidden: &mut self.d.dln,
            dwte: views_mut(&mut self.grads, &self.config).wte,
        });
        lm_head_crossentropy(
            &self.lnf,
            wte,
            targets,
            &mut self.losses,
            c,
            v,
            grads,
            &mut self.probs,
        )
    }

    /// Logits of the last forward pass, `[batch * seq, vocab]`, recomputed
    /// from the saved final hidden states (the forward pass keeps none: it
    /// takes the LM head a chunk of rows at a time).
    pub fn logits(&self) -> Vec<f32> {
        let (n, c, v) = (
            self.batch * self.seq,
            self.config.n_embd,
            self.config.vocab_size,
        );
        let mut logits = vec![0f32; n * v];
        lm_head_forward(
            &mut logits,
            &self.lnf,
            views(&self.params, &self.config).wte,
            n,
            c,
            v,
        );
        logits
    }

    pub fn zero_grads(&mut self) {
        self.grads.fill(0.0);
    }

    /// Adds to `grads` the gradient of a loss whose gradient with respect
    /// to the final hidden states of the last [`TrainModel::forward_hidden`]
    /// is `dhidden`, `[batch * seq, C]` (a head's backward pass has
    /// produced it, and added its own parameters' gradients itself).
    pub fn backward_hidden(&mut self, dhidden: &[f32]) {
        self.d.dln.copy_from_slice(dhidden);
        self.backward_body();
    }

    /// From the gradient of the final hidden states in `d.dln` back through
    /// the final LayerNorm, the blocks and the embeddings.
    fn backward_body(&mut self) {
        let cfg = self.config;
        let c = cfg.n_embd;
        let (n, shape) = (self.batch * self.seq, self.shape());
        let p = views(&self.params, &cfg);
        let mut g = views_mut(&mut self.grads, &cfg);
        let d = &mut self.d;
        d.dres.fill(0.0);
        let last = &self.layers[cfg.n_layer - 1].res3;
        layernorm_backward(
            &mut d.dres,
            g.ln_f_w,
            g.ln_f_b,
            &d.dln,
            last,
            p.ln_f_w,
            &self.lnf_mean,
            &self.lnf_rstd,
            c,
        );
        for l in (0..cfg.n_layer).rev() {
            let x = if l == 0 {
                &self.encoded
            } else {
                &self.layers[l - 1].res3
            };
            block_backward(
                d,
                &self.layers[l],
                x,
                &p.layers[l],
                &mut g.layers[l],
                n,
                shape,
            );
        }
        encoder_backward(g.wte, g.wpe, &d.dres, &self.tokens, self.seq, c);
    }
}
