//! All parameters (or all their gradients, or an optimizer moment) in one
//! flat buffer, llm.c style, in the checkpoint's tensor order and layout
//! (Conv1D matrices in x out), with named views into it.

use gpt2_model::layout::{tensor_shapes, Gpt2, Source};
use gpt2_model::{Config, Result};

/// One transformer block's views, in checkpoint order.
pub type Layer<S> = gpt2_model::layout::Layer<S, S>;

/// Views of a flat buffer: `S` is `&[f32]` or `&mut [f32]`.
pub type Params<S> = Gpt2<S, S, S>;

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

/// Hands out consecutive pieces of a flat buffer in the order
/// [`Gpt2::build`] asks for them, which is the buffer's order.
struct Pieces<B>(B);

/// Splits `n` elements off the front of a buffer view.
pub(crate) trait SplitFront: Sized {
    fn split_front(&mut self, n: usize) -> Self;
}

impl SplitFront for &[f32] {
    fn split_front(&mut self, n: usize) -> Self {
        let (head, tail) = self.split_at(n);
        *self = tail;
        head
    }
}

impl SplitFront for &mut [f32] {
    fn split_front(&mut self, n: usize) -> Self {
        let (head, tail) = std::mem::take(self).split_at_mut(n);
        *self = tail;
        head
    }
}

impl<B: SplitFront> Source for Pieces<B> {
    type Vector = B;
    type Matrix = B;
    type Embedding = B;
    fn vector(&mut self, _: &str, shape: &[usize]) -> Result<B> {
        Ok(self.0.split_front(shape.iter().product()))
    }
    fn matrix(&mut self, _: &str, k: usize, n: usize) -> Result<B> {
        Ok(self.0.split_front(k * n))
    }
    fn embedding(&mut self, _: &str, rows: usize, cols: usize) -> Result<B> {
        Ok(self.0.split_front(rows * cols))
    }
}

fn pieces<B: SplitFront>(buf: B, config: &Config) -> Params<B> {
    // invariant: Pieces never fails, and the callers' buffers hold
    // `config.num_parameters()` floats (split_at checks it).
    Gpt2::build(config, &mut Pieces(buf)).unwrap_or_else(|_| unreachable!())
}

/// Read-only views of `buf`, which holds `config.num_parameters()` floats.
pub fn views<'a>(buf: &'a [f32], config: &Config) -> Params<&'a [f32]> {
    pieces(buf, config)
}

/// Mutable views of `buf`, which holds `config.num_parameters()` floats.
pub fn views_mut<'a>(buf: &'a mut [f32], config: &Config) -> Params<&'a mut [f32]> {
    pieces(buf, config)
}
