//! GPT-2's tensors, in one place: their Hugging Face names and shapes
//! ([`tensor_shapes`]), and one struct of them ([`Gpt2`]) generic over
//! how each is held. Inference holds [`crate::weights::Weights`] (f32 or
//! packed tensors); training holds views of one flat buffer of
//! parameters, of gradients, or of an optimizer moment. Loading, writing,
//! quantizing and checkpoints all walk this struct, building it in table
//! order with [`Gpt2::build`] or listing it with [`Gpt2::params`].
//!
//! The LM head is tied to `wte` and has no entry of its own.

use crate::config::Config;
use crate::error::Result;

/// One transformer block, fields named as in the checkpoint: `V` holds a
/// vector (LayerNorm parameters, biases), `M` a layer matrix.
#[derive(Clone)]
pub struct Layer<V, M> {
    pub ln_1_w: V,
    pub ln_1_b: V,
    /// [C, 3C]: the query, key and value projections side by side.
    pub attn_w: M,
    pub attn_b: V,
    /// [C, C]
    pub attn_proj_w: M,
    pub attn_proj_b: V,
    pub ln_2_w: V,
    pub ln_2_b: V,
    /// [C, 4C]
    pub fc_w: M,
    pub fc_b: V,
    /// [4C, C]
    pub fc_proj_w: M,
    pub fc_proj_b: V,
}

/// All of GPT-2's parameters; `E` holds the token embedding.
#[derive(Clone)]
pub struct Gpt2<V, M, E> {
    /// [V, C]; also the LM head.
    pub wte: E,
    /// [n_ctx, C]
    pub wpe: V,
    pub layers: Vec<Layer<V, M>>,
    pub ln_f_w: V,
    pub ln_f_b: V,
}

/// The tensor names of one layer, in [`Layer`] field order, with their
/// shapes as multiples of C (rows 0: a vector).
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

/// Every tensor a checkpoint of this shape holds, with its shape, in
/// checkpoint order (names without the `transformer.` prefix).
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

/// Where [`Gpt2::build`] gets each tensor, asked for by name and shape in
/// checkpoint order; each file format (or buffer) answers in its own way.
pub trait Source {
    type Vector;
    type Matrix;
    type Embedding;
    /// A tensor of exactly `shape` (the vectors, and `wpe`).
    fn vector(&mut self, name: &str, shape: &[usize]) -> Result<Self::Vector>;
    /// A layer matrix of Conv1D shape `[k, n]`.
    fn matrix(&mut self, name: &str, k: usize, n: usize) -> Result<Self::Matrix>;
    /// The token embedding `[rows, cols]`.
    fn embedding(&mut self, name: &str, rows: usize, cols: usize) -> Result<Self::Embedding>;
}

/// One entry of [`Gpt2::params`].
pub enum Param<V, M, E> {
    Vector(V),
    Matrix(M),
    Embedding(E),
}

impl<V, M, E> Gpt2<V, M, E> {
    /// Every tensor of the shape `cfg`, asked of `src` in checkpoint order.
    pub fn build<S>(cfg: &Config, src: &mut S) -> Result<Self>
    where
        S: Source<Vector = V, Matrix = M, Embedding = E>,
    {
        let c = cfg.n_embd;
        let wte = src.embedding("wte.weight", cfg.vocab_size, c)?;
        let wpe = src.vector("wpe.weight", &[cfg.n_ctx, c])?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let name = |leaf: &str| format!("h.{i}.{leaf}");
            let ln_1_w = src.vector(&name("ln_1.weight"), &[c])?;
            let ln_1_b = src.vector(&name("ln_1.bias"), &[c])?;
            let attn_w = src.matrix(&name("attn.c_attn.weight"), c, 3 * c)?;
            let attn_b = src.vector(&name("attn.c_attn.bias"), &[3 * c])?;
            let attn_proj_w = src.matrix(&name("attn.c_proj.weight"), c, c)?;
            let attn_proj_b = src.vector(&name("attn.c_proj.bias"), &[c])?;
            let ln_2_w = src.vector(&name("ln_2.weight"), &[c])?;
            let ln_2_b = src.vector(&name("ln_2.bias"), &[c])?;
            let fc_w = src.matrix(&name("mlp.c_fc.weight"), c, 4 * c)?;
            let fc_b = src.vector(&name("mlp.c_fc.bias"), &[4 * c])?;
            let fc_proj_w = src.matrix(&name("mlp.c_proj.weight"), 4 * c, c)?;
            let fc_proj_b = src.vector(&name("mlp.c_proj.bias"), &[c])?;
            layers.push(Layer {
                ln_1_w,
                ln_1_b,
                attn_w,
                attn_b,
                attn_proj_w,
                attn_proj_b,
                ln_2_w,
                ln_2_b,
                fc_w,
                fc_b,
                fc_proj_w,
                fc_proj_b,
            });
        }
        let ln_f_w = src.vector("ln_f.weight", &[c])?;
        let ln_f_b = src.vector("ln_f.bias", &[c])?;
        Ok(Gpt2 {
            wte,
            wpe,
            layers,
            ln_f_w,
            ln_f_b,
        })
    }

    /// Every tensor with its Hugging Face name, in checkpoint order: what
    /// the file writers walk.
    pub fn params(&self) -> Vec<(String, Param<&V, &M, &E>)> {
        let mut out = vec![
            ("wte.weight".to_string(), Param::Embedding(&self.wte)),
            ("wpe.weight".to_string(), Param::Vector(&self.wpe)),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            let fields = [
                Param::Vector(&l.ln_1_w),
                Param::Vector(&l.ln_1_b),
                Param::Matrix(&l.attn_w),
                Param::Vector(&l.attn_b),
                Param::Matrix(&l.attn_proj_w),
                Param::Vector(&l.attn_proj_b),
                Param::Vector(&l.ln_2_w),
                Param::Vector(&l.ln_2_b),
                Param::Matrix(&l.fc_w),
                Param::Vector(&l.fc_b),
                Param::Matrix(&l.fc_proj_w),
                Param::Vector(&l.fc_proj_b),
            ];
            for (&(name, _, _), param) in LAYER_TENSORS.iter().zip(fields) {
                out.push((format!("h.{i}.{name}"), param));
            }
        }
        out.push(("ln_f.weight".to_string(), Param::Vector(&self.ln_f_w)));
        out.push(("ln_f.bias".to_string(), Param::Vector(&self.ln_f_b)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that answers each request with its name and shape.
    struct Names;

    impl Source for Names {
        type Vector = (String, Vec<usize>);
        type Matrix = (String, Vec<usize>);
        type Embedding = (String, Vec<usize>);
        fn vector(&mut self, name: &str, shape: &[usize]) -> Result<Self::Vector> {
            Ok((name.to_string(), shape.to_vec()))
        }
        fn matrix(&mut self, name: &str, k: usize, n: usize) -> Result<Self::Matrix> {
            Ok((name.to_string(), vec![k, n]))
        }
        fn embedding(&mut self, name: &str, rows: usize, cols: usize) -> Result<Self::Embedding> {
            Ok((name.to_string(), vec![rows, cols]))
        }
    }

    #[test]
    fn build_params_and_the_table_agree() {
        for config in [Config::GPT2, Config::GPT2_MEDIUM] {
            let table = tensor_shapes(&config);
            let total: usize = table.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
            assert_eq!(total, config.num_parameters());
            let built = Gpt2::build(&config, &mut Names).unwrap();
            let listed: Vec<(String, Vec<usize>)> = built
                .params()
                .into_iter()
                .map(|(name, p)| {
                    let (n, shape) = match p {
                        Param::Vector(x) | Param::Matrix(x) | Param::Embedding(x) => x,
                    };
                    assert_eq!(&name, n, "params() names what build() asked for");
                    (name, shape.clone())
                })
                .collect();
            assert_eq!(listed, table);
        }
    }
}
