//! Training kernels still apart from the model crate's (matrix products,
//! attention, the LM head with cross-entropy), llm.c style: each layer is a
//! `*_forward` that keeps what its backward needs, and a `*_backward`
//! beside it that adds into the gradients. Shapes: `n` rows (batch x time)
//! of width `c`. LayerNorm, GELU and the encoder live with their inference
//! halves in `gpt2_model::kernels`.

use gpt2_model::kernels::simd;
use gpt2_model::kernels::DisjointPtr;
use rayon::prelude::*;

/// A matrix operand read through strides.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    row_stride: usize,
    col_stride: usize,
}

fn op(data: &[f32], row_stride: usize, col_stride: usize) -> Operand {
    Operand {
        ptr: data.as_ptr(),
        row_stride,
        col_stride,
    }
}

/// `dst (m x n) = (accumulate ? dst : 0) + scale * a (m x k) . b (k x n)`.
///
/// # Safety
/// Every operand, read through its strides, lies inside the memory it
/// points into, and `dst` is not read by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row_stride: usize,
    accumulate: bool,
    a: Operand,
    b: Operand,
    scale: f32,
    parallel: bool,
) {
    let par = if parallel {
        gpt2_model::kernels::gemm_parallelism()
    } else {
        gemm::Parallelism::None
    };
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            a.ptr,
            a.col_stride as isize,
            a.row_stride as isize,
            b.ptr,
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// `out = inp @ weight + bias` for `n` rows; `weight` is `[in_dim, out_dim]`.
pub fn matmul_forward(
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
        false,
        &mut Vec::new(),
    );
}

/// Adds the gradients of `out = inp @ weight + bias` into `dinp`, `dweight`
/// and `dbias`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    n: usize,
    in_dim: usize,
    out_dim: usize,
) {
    assert!(
        dinp.len() >= n * in_dim && dout.len() >= n * out_dim && inp.len() >= n * in_dim,
        "matmul_backward: shapes"
    );
    assert!(
        weight.len() == in_dim * out_dim
            && dweight.len() == in_dim * out_dim
            && dbias.len() == out_dim,
        "matmul_backward: weights"
    );
    // SAFETY: the asserts bound every operand: dout n x out_dim, weight^T
    // out_dim x in_dim read through strides (1, out_dim), inp^T in_dim x n
    // through strides (1, in_dim).
    unsafe {
        matmul(
            n,
            in_dim,
            out_dim,
            dinp.as_mut_ptr(),
            in_dim,
            true,
            op(dout, out_dim, 1),
            op(weight, 1, out_dim),
            1.0,
            true,
        );
        matmul(
            in_dim,
            out_dim,
            n,
            dweight.as_mut_ptr(),
            out_dim,
            true,
            op(inp, 1, in_dim),
            op(dout, out_dim, 1),
            1.0,
            true,
        );
    }
    for row in dout[..n * out_dim].chunks_exact(out_dim) {
        simd::axpy(dbias, 1.0, row);
    }
}

/// Shapes of causal self-attention over `b` sequences of `t` positions.
#[derive(Clone, Copy)]
pub struct AttentionShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub n_head: usize,
}

impl AttentionShape {
    fn hd(&self) -> usize {
        self.c / self.n_head
    }

    fn scale(&self) -> f32 {
        1.0 / (self.hd() as f32).sqrt()
    }
}

/// `qkv` is `[b*t, 3C]`; writes `out` `[b*t, C]` and the attention
/// probabilities `att` `[b, n_head, t, t]` (zero above the diagonal).
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], s: AttentionShape) {
    let (t, c, hd) = (s.t, s.c, s.hd());
    assert!(
        qkv.len() >= s.b * t * 3 * c
            && out.len() >= s.b * t * c
            && att.len() >= s.b * s.n_head * t * t,
        "attention_forward: shapes"
    );
    let out_ptr = DisjointPtr::new(out);
    att[..s.b * s.n_head * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(task, p)| {
            let (bi, h) = (task / s.n_head, task % s.n_head);
            let q = &qkv[bi * t * 3 * c + h * hd..];
            let k = &qkv[bi * t * 3 * c + c + h * hd..];
            let v = &qkv[bi * t * 3 * c + 2 * c + h * hd..];
            // SAFETY: Q, K, V rows are read with stride 3C inside this
            // sequence's block of qkv; P is t x t; the output block is this
            // head's columns of this sequence's rows.
            unsafe {
                matmul(
                    t,
                    t,
                    hd,
                    p.as_mut_ptr(),
                    t,
                    false,
                    op(q, 3 * c, 1),
                    op(k, 1, 3 * c),
                    s.scale(),
                    false,
                )
            };
            for (i, row) in p.chunks_exact_mut(t).enumerate() {
                simd::softmax(&mut row[..=i]);
                row[i + 1..].fill(0.0);
            }
            unsafe {
                matmul(
                    t,
                    hd,
                    t,
                    out_ptr.at(bi * t * c + h * hd),
                    c,
                    false,
                    op(p, t, 1),
                    op(v, 3 * c, 1),
                    1.0,
                    false,
                )
            };
        });
}

/// Adds the gradient with respect to `qkv` into `dqkv`, given `dout` and the
/// probabilities saved by the forward pass. `scratch` holds `b*n_head*t*t`.
pub fn attention_backward(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    s: AttentionShape,
) {
    let (t, c, hd) = (s.t, s.c, s.hd());
    assert!(
        dqkv.len() >= s.b * t * 3 * c
            && scratch.len() >= s.b * s.n_head * t * t
            && dout.len() >= s.b * t * c,
        "attention_backward: shapes"
    );
    let dqkv_ptr = DisjointPtr::new(dqkv);
    scratch[..s.b * s.n_head * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(task, ds)| {
            let (bi, h) = (task / s.n_head, task % s.n_head);
            let base = bi * t * 3 * c + h * hd;
            let (q, k, v) = (&qkv[base..], &qkv[base + c..], &qkv[base + 2 * c..]);
            let p = &att[task * t * t..(task + 1) * t * t];
            let d_o = &dout[bi * t * c + h * hd..];
            // SAFETY: as in the forward pass; the writes go to this head's
            // columns of this sequence's rows of dqkv (query, key and value parts).
            unsafe {
                // dP = dO . V^T
                matmul(
                    t,
                    t,
                    hd,
                    ds.as_mut_ptr(),
                    t,
                    false,
                    op(d_o, c, 1),
                    op(v, 1, 3 * c),
                    1.0,
                    false,
                );
                // dV += P^T . dO
                matmul(
                    t,
                    hd,
                    t,
                    dqkv_ptr.at(base + 2 * c),
                    3 * c,
                    true,
                    op(p, 1, t),
                    op(d_o, c, 1),
                    1.0,
                    false,
                );
            }
            // dS = P * (dP - sum_j P dP), row by row; zero where P is.
            for (prow, drow) in p.chunks_exact(t).zip(ds.chunks_exact_mut(t)) {
                let dot = simd::dot(prow, drow);
                for (d, &pv) in drow.iter_mut().zip(prow) {
                    *d = pv * (*d - dot);
                }
            }
            unsafe {
                // dQ += scale * dS . K ; dK += scale * dS^T . Q
                matmul(
                    t,
                    hd,
                    t,
                    dqkv_ptr.at(base),
                    3 * c,
                    true,
                    op(ds, t, 1),
                    op(k, 3 * c, 1),
                    s.scale(),
                    false,
                );
                matmul(
                    t,
                    hd,
                    t,
                    dqkv_ptr.at(base + c),
                    3 * c,
                    true,
                    op(ds, 1, t),
                    op(q, 3 * c, 1),
                    s.scale(),
                    false,
                );
            }
        });
}

/// Logits `[n, vocab]` = `inp` `[n, C]` . `wte^T` (the tied LM head).
pub fn lm_head_forward(
    logits: &mut [f32],
    inp: &[f32],
    wte: &[f32],
    n: usize,
    c: usize,
    vocab: usize,
) {
    gpt2_model::kernels::lm_head_forward(logits, inp, wte, n, c, vocab);
}

/// Adds the LM head's gradients: `dinp += dlogits . wte`, `dwte += dlogits^T . inp`.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_backward(
    dinp: &mut [f32],
    dwte: &mut [f32],
    dlogits: &[f32],
    inp: &[f32],
    wte: &[f32],
    n: usize,
    c: usize,
    vocab: usize,
) {
    assert!(
        dinp.len() >= n * c
            && dlogits.len() >= n * vocab
            && wte.len() == vocab * c
            && dwte.len() == vocab * c,
        "lm_head_backward: shapes"
    );
    // SAFETY: dlogits is n x vocab, wte vocab x c, inp n x c.
    unsafe {
        matmul(
            n,
            c,
            vocab,
            dinp.as_mut_ptr(),
            c,
            true,
            op(dlogits, vocab, 1),
            op(wte, c, 1),
            1.0,
            true,
        );
        matmul(
            vocab,
            c,
            n,
            dwte.as_mut_ptr(),
            c,
            true,
            op(dlogits, 1, vocab),
            op(inp, c, 1),
            1.0,
            true,
        );
    }
}

/// Softmax of each row of `logits` in place (they become probabilities) and
/// the cross-entropy of each target; returns the mean loss.
pub fn crossentropy_forward(
    probs: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    vocab: usize,
) -> f32 {
    probs
        .par_chunks_mut(vocab)
        .zip(losses.par_iter_mut().zip(targets.par_iter()))
        .for_each(|(row, (loss, &tgt))| {
            let max = simd::max(row);
            let sum = simd::exp_shifted_sum(row, max);
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|p| *p *= inv);
            *loss = -(row[tgt as usize].max(f32::MIN_POSITIVE)).ln();
        });
    losses.iter().map(|&l| l as f64).sum::<f64>() as f32 / losses.len() as f32
}

/// Turns the probabilities into the gradient of the mean loss with respect
/// to the logits, in place: `(p - onehot(target)) / n`.
pub fn crossentropy_backward(probs: &mut [f32], targets: &[u32], vocab: usize) {
    let inv_n = 1.0 / targets.len() as f32;
    probs
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .for_each(|(row, &tgt)| {
            row[tgt as usize] -= 1.0;
            row.iter_mut().for_each(|p| *p *= inv_n);
        });
}
