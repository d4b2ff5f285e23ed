//! The layers of GPT-2 as plain functions over flat row-major `f32` slices,
//! llm.c style: each layer's `*_forward` and, where training needs one,
//! its `*_backward` beside it, shared by inference and training: the
//! encoder, LayerNorm (layernorm.rs), the matrix products, attention
//! (attention.rs), GELU, and the LM head with cross-entropy. The
//! inference-only variants sit beside them: attention over the KV cache,
//! packed-weight products (packed.rs), decode-batch kernels (batch.rs).
//!
//! Shapes: `rows` is the number of token positions in the batch, `C` the
//! embedding width. Weights are in the checkpoint's Conv1D layout
//! (in x out), so `x @ W` reads `W` row by row.

pub mod attention;
pub mod batch;
pub mod layernorm;
pub mod packed;
pub mod simd;

pub use layernorm::{layernorm_backward, layernorm_forward, layernorm_row, RowStats};

use crate::weights::Linear;
use rayon::prelude::*;

/// Whether a matrix product overwrites its output or adds into it; adding
/// fuses the residual connection `x = x + f(x)` into the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Overwrite,
    AddTo,
}

/// Up to this many rows, matrix products stream the weights once through
/// vector kernels (decode is memory-bound); above it they go to `gemm`.
pub const SKINNY_MAX_ROWS: usize = 4;

/// A raw pointer that threads may share because each writes a disjoint part.
#[derive(Clone, Copy)]
pub struct DisjointPtr(*mut f32);
// SAFETY: users guarantee that concurrent writers touch disjoint elements.
unsafe impl Send for DisjointPtr {}
unsafe impl Sync for DisjointPtr {}

impl DisjointPtr {
    pub fn new(buf: &mut [f32]) -> DisjointPtr {
        DisjointPtr(buf.as_mut_ptr())
    }

    /// # Safety
    /// `offset..offset + len` lies inside the buffer this was made from,
    /// which outlives `'a`, and no other thread touches those elements
    /// while the slice lives.
    pub unsafe fn slice<'a>(self, offset: usize, len: usize) -> &'a mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }

    /// The raw pointer at `offset`, for a strided write (a gemm destination).
    ///
    /// # Safety
    /// `offset` lies inside the buffer this was made from.
    pub unsafe fn at(self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// Splits `0..n` into ranges for the threads, each a multiple of 8 wide
/// (the vector width) except the last. Several ranges per thread, so that a
/// thread slowed by something else on the machine is helped by work stealing.
fn column_chunks(n: usize) -> impl IndexedParallelIterator<Item = (usize, usize)> {
    aligned_chunks(n, 8)
}

/// As [`column_chunks`], each range a multiple of `align` wide.
fn aligned_chunks(n: usize, align: usize) -> impl IndexedParallelIterator<Item = (usize, usize)> {
    let pieces = 8 * rayon::current_num_threads().max(1);
    let width = (n.div_ceil(pieces).div_ceil(align) * align).max(align);
    (0..n.div_ceil(width))
        .into_par_iter()
        .map(move |i| (i * width, ((i + 1) * width).min(n)))
}

/// Slabs of weight rows a decode step splits each matrix into. Fixed (not
/// the thread count) so results do not depend on how many threads run.
const K_SLABS: usize = 32;

/// `out[r] = (AddTo ? out[r] : 0) + inp[r] @ weight + bias`, for `rows`
/// rows; `weight` is `[in_dim, out_dim]`, the checkpoint's Conv1D layout.
/// Adding fuses the residual add (see [`Dest`]). `partials` is scratch for the
/// few-row path (grown once, then reused).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    dest: Dest,
    partials: &mut Vec<f32>,
) {
    assert!(
        out.len() >= rows * out_dim && inp.len() >= rows * in_dim,
        "matmul_forward: buffers too small"
    );
    assert!(
        weight.len() == in_dim * out_dim && bias.len() == out_dim,
        "matmul_forward: weight shape"
    );
    if rows == 0 {
        return;
    }
    start_with_bias(out, bias, rows, out_dim, dest);
    if rows <= SKINNY_MAX_ROWS {
        skinny_matmul(out, inp, weight, rows, in_dim, out_dim, partials);
        return;
    }
    if batch::conv1d(out, inp, weight, rows, in_dim, out_dim) {
        return;
    }
    // SAFETY: the asserts above bound every index gemm touches: dst is
    // rows x out_dim, lhs rows x in_dim, rhs in_dim x out_dim, row-major.
    unsafe {
        gemm_accumulate(
            rows,
            out_dim,
            in_dim,
            (out.as_mut_ptr(), out_dim),
            (inp.as_ptr(), in_dim),
            (weight.as_ptr(), out_dim),
        )
    };
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
        gemm_strided(
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
        gemm_strided(
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

/// A matrix operand read through strides.
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    ptr: *const f32,
    row_stride: usize,
    col_stride: usize,
}

pub(crate) fn op(data: &[f32], row_stride: usize, col_stride: usize) -> Operand {
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
pub(crate) unsafe fn gemm_strided(
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
        gemm_parallelism()
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

/// Sets each output row to `bias`, or adds `bias` to it when accumulating.
fn start_with_bias(out: &mut [f32], bias: &[f32], rows: usize, out_dim: usize, dest: Dest) {
    for row in out[..rows * out_dim].chunks_exact_mut(out_dim) {
        if dest == Dest::AddTo {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        } else {
            row.copy_from_slice(bias);
        }
    }
}

/// [`matmul_forward`] for a layer matrix in any storage: f32 Conv1D, or
/// packed (`packed::packed_matmul`).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &Linear,
    bias: &[f32],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    dest: Dest,
    partials: &mut Vec<f32>,
) {
    match weight {
        Linear::Conv1D(w) => matmul_forward(
            out,
            inp,
            w.data(),
            bias,
            rows,
            in_dim,
            out_dim,
            dest,
            partials,
        ),
        Linear::Packed(w) => {
            assert!(
                w.rows() == out_dim && w.cols() == in_dim && bias.len() == out_dim,
                "linear_forward: weight shape"
            );
            start_with_bias(out, bias, rows, out_dim, dest);
            packed::packed_matmul(out, inp, w, rows);
        }
    }
}

/// `dst += lhs @ rhs` for row-major `[m, k] @ [k, n]`, each operand a
/// pointer with its row stride, on the pool's threads.
///
/// # Safety
/// Every row of each operand, at its stride, lies inside its buffer, and
/// `dst` aliases neither input.
pub unsafe fn gemm_accumulate(
    m: usize,
    n: usize,
    k: usize,
    dst: (*mut f32, usize),
    lhs: (*const f32, usize),
    rhs: (*const f32, usize),
) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            dst.1 as isize,
            true,
            lhs.0,
            1,
            lhs.1 as isize,
            rhs.0,
            1,
            rhs.1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(),
        )
    }
}

pub fn gemm_parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `out[r] += inp[r] @ weight` for a few rows, memory-bound: the weight is
/// cut into `K_SLABS` slabs of consecutive rows; each task streams one slab
/// in order, a row at a time (a single sequential stream per thread is what
/// the hardware prefetchers follow best), into a partial sum per slab; the
/// partials are then added in slab order.
fn skinny_matmul(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    partials: &mut Vec<f32>,
) {
    let slab_rows = in_dim.div_ceil(K_SLABS);
    let slabs = in_dim.div_ceil(slab_rows);
    let block = rows * out_dim;
    if partials.len() < slabs * block {
        partials.resize(slabs * block, 0.0);
    }
    partials[..slabs * block]
        .par_chunks_mut(block)
        .enumerate()
        .for_each(|(s, partial)| {
            partial.fill(0.0);
            for i in s * slab_rows..((s + 1) * slab_rows).min(in_dim) {
                let w = &weight[i * out_dim..(i + 1) * out_dim];
                for r in 0..rows {
                    simd::axpy(
                        &mut partial[r * out_dim..(r + 1) * out_dim],
                        inp[r * in_dim + i],
                        w,
                    );
                }
            }
        });
    for partial in partials[..slabs * block].chunks_exact(block) {
        simd::axpy(&mut out[..block], 1.0, partial);
    }
}

/// The tied LM head: `logits[r][v] = hidden[r] . wte[v]`, for `rows` rows of
/// width `c`, writing `[rows, vocab]`. `wte` is `[vocab, c]`, so each logit
/// is a dot product over one contiguous row.
pub fn lm_head_forward(
    logits: &mut [f32],
    hidden: &[f32],
    wte: &[f32],
    rows: usize,
    c: usize,
    vocab: usize,
) {
    assert!(
        logits.len() >= rows * vocab && hidden.len() >= rows * c && wte.len() == vocab * c,
        "lm_head_forward: shapes"
    );
    if rows == 0 {
        return;
    }
    if rows <= SKINNY_MAX_ROWS {
        // Blocks of vocabulary rows small enough to stay in L2 while every
        // batch row is dotted with them: the embedding is read once.
        const BLOCK: usize = 64;
        logits[..rows * vocab].fill(0.0);
        let out_ptr = DisjointPtr::new(logits);
        column_chunks(vocab).for_each(|(v0, v1)| {
            for b0 in (v0..v1).step_by(BLOCK) {
                let b1 = (b0 + BLOCK).min(v1);
                for r in 0..rows {
                    // SAFETY: row r, columns b0..b1 lie inside logits and
                    // belong to this chunk only.
                    let out = unsafe { out_ptr.slice(r * vocab + b0, b1 - b0) };
                    simd::dot_rows_add(&hidden[r * c..(r + 1) * c], &wte[b0 * c..b1 * c], out);
                }
            }
        });
        return;
    }
    if batch::lm_head(logits, hidden, wte, rows, c, vocab) {
        return;
    }
    // SAFETY: dst rows x vocab, lhs rows x c, rhs = wte^T read through
    // strides (k stride 1, n stride c) inside wte's vocab x c.
    unsafe {
        gemm::gemm(
            rows,
            vocab,
            c,
            logits.as_mut_ptr(),
            1,
            vocab as isize,
            false,
            hidden.as_ptr(),
            1,
            c as isize,
            wte.as_ptr(),
            c as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm_parallelism(),
        );
    }
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
        gemm_strided(
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
        gemm_strided(
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
    mean_loss(losses)
}

/// The mean of per-row losses, summed in f64.
fn mean_loss(losses: &[f32]) -> f32 {
    losses.iter().map(|&l| l as f64).sum::<f64>() as f32 / losses.len() as f32
}

/// Turns the probabilities into the gradient of `scale` times the summed
/// loss with respect to the logits, in place: `(p - onehot(target)) * scale`
/// (`scale` is 1/n for the mean over n rows).
pub fn crossentropy_backward(probs: &mut [f32], targets: &[u32], vocab: usize, scale: f32) {
    probs
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .for_each(|(row, &tgt)| {
            row[tgt as usize] -= 1.0;
            row.iter_mut().for_each(|p| *p *= scale);
        });
}

/// Rows the fused LM head and cross-entropy ([`lm_head_crossentropy`])
/// takes at a time: the `[rows, vocab]` probabilities are a training step's
/// largest buffer, so they exist for one chunk only (51 MB at GPT-2's
/// vocabulary), and each chunk's gemms are still large.
pub const LM_HEAD_CHUNK: usize = 256;

/// Where [`lm_head_crossentropy`] adds its gradients: `dhidden` (`[n, c]`,
/// overwritten) and the tied embedding's `dwte` (`[vocab, c]`, added to).
pub struct HeadGrads<'a> {
    pub dhidden: &'a mut [f32],
    pub dwte: &'a mut [f32],
}

/// The tied LM head and the cross-entropy of `targets` for the `n =
/// targets.len()` rows of `hidden`, fused and taken [`LM_HEAD_CHUNK`] rows
/// at a time; writes each row's loss to `losses` and returns their mean.
/// With `grads`, also the gradient of that mean (forward and backward of
/// each chunk while its probabilities are in cache, so no `[n, vocab]`
/// buffer is ever made). `probs` is scratch, grown once.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_crossentropy(
    hidden: &[f32],
    wte: &[f32],
    targets: &[u32],
    losses: &mut [f32],
    c: usize,
    vocab: usize,
    mut grads: Option<HeadGrads>,
    probs: &mut Vec<f32>,
) -> f32 {
    let n = targets.len();
    assert!(
        hidden.len() == n * c && losses.len() == n,
        "lm_head_crossentropy: shapes"
    );
    let chunk = LM_HEAD_CHUNK.min(n);
    if probs.len() < chunk * vocab {
        probs.resize(chunk * vocab, 0.0);
    }
    let scale = 1.0 / n as f32;
    for r0 in (0..n).step_by(chunk) {
        let rows = chunk.min(n - r0);
        let (p, h, t) = (
            &mut probs[..rows * vocab],
            &hidden[r0 * c..(r0 + rows) * c],
            &targets[r0..r0 + rows],
        );
        lm_head_forward(p, h, wte, rows, c, vocab);
        crossentropy_forward(p, &mut losses[r0..r0 + rows], t, vocab);
        if let Some(g) = grads.as_mut() {
            crossentropy_backward(p, t, vocab, scale);
            let dh = &mut g.dhidden[r0 * c..(r0 + rows) * c];
            dh.fill(0.0);
            lm_head_backward(dh, g.dwte, p, h, wte, rows, c, vocab);
        }
    }
    mean_loss(losses)
}

/// GELU in place over `rows` rows (parallel when there are many).
pub fn gelu_forward(v: &mut [f32], row_len: usize) {
    if v.len() >= 16 * row_len {
        v.par_chunks_mut(row_len * 4).for_each(simd::gelu);
    } else {
        simd::gelu(v);
    }
}

/// Adds GELU's gradient at `inp` times `dout` into `dinp`.
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(4096)
        .zip(inp.par_chunks(4096).zip(dout.par_chunks(4096)))
        .for_each(|(di, (x, d))| simd::gelu_backward(di, x, d));
}

/// The token plus position embedding of each of `tokens` (sequences of `t`
/// positions) into `out`, from f32 tables. (Inference embeds through
/// `Model::embed`, which also reads packed tables and cache positions.)
pub fn encoder_forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    t: usize,
    c: usize,
) {
    for (i, (row, &tok)) in out.chunks_exact_mut(c).zip(tokens).enumerate() {
        let (e, p) = (&wte[tok as usize * c..][..c], &wpe[(i % t) * c..][..c]);
        for ((o, a), b) in row.iter_mut().zip(e).zip(p) {
            *o = a + b;
        }
    }
}

/// Adds the embeddings' gradients: each row of `dout` into its token's and
/// its position's rows.
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    t: usize,
    c: usize,
) {
    for (i, (d, &tok)) in dout.chunks_exact(c).zip(tokens).enumerate() {
        simd::axpy(&mut dwte[tok as usize * c..][..c], 1.0, d);
        simd::axpy(&mut dwpe[(i % t) * c..][..c], 1.0, d);
    }
}

/// Log-softmax statistics of one row of logits, computed without modifying
/// it: `(max, log_sum_exp)`, so `logprob(i) = logits[i] - max - log_sum_exp`.
/// `work` is scratch of the same length.
pub fn log_softmax_stats(logits: &[f32], work: &mut [f32]) -> (f32, f32) {
    let max = simd::max(logits);
    work.copy_from_slice(logits);
    let sum = simd::exp_shifted_sum(work, max);
    (max, sum.ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pseudo(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn naive_matmul(
        inp: &[f32],
        w: &[f32],
        b: &[f32],
        rows: usize,
        k: usize,
        n: usize,
    ) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut s = b[j] as f64;
                for i in 0..k {
                    s += inp[r * k + i] as f64 * w[i * n + j] as f64;
                }
                out[r * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn matmul_paths_match_a_naive_product() {
        for &(rows, k, n) in &[
            (1, 7, 13),
            (3, 64, 40),
            (4, 33, 129),
            (2, 3, 300),
            (1, 300, 5),
            (5, 16, 24),
            (37, 70, 90),
        ] {
            let (inp, w, b) = (pseudo(rows * k, 1), pseudo(k * n, 2), pseudo(n, 3));
            let want = naive_matmul(&inp, &w, &b, rows, k, n);
            // Overwriting ignores what was there; accumulating adds to it.
            for (dest, before, added) in [(Dest::Overwrite, f32::NAN, 0.0), (Dest::AddTo, 1.0, 1.0)]
            {
                let mut out = vec![before; rows * n];
                matmul_forward(&mut out, &inp, &w, &b, rows, k, n, dest, &mut Vec::new());
                for (o, e) in out.iter().zip(&want) {
                    assert!(
                        (o - added - e).abs() < 1e-5,
                        "rows={rows} {dest:?}: {o} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn lm_head_paths_match_a_naive_product() {
        for &(rows, c, v) in &[(1, 16, 101), (4, 24, 37), (9, 32, 77)] {
            let (h, wte) = (pseudo(rows * c, 4), pseudo(v * c, 5));
            let mut logits = vec![f32::NAN; rows * v];
            lm_head_forward(&mut logits, &h, &wte, rows, c, v);
            for r in 0..rows {
                for t in 0..v {
                    let want: f32 = (0..c).map(|i| h[r * c + i] * wte[t * c + i]).sum();
                    assert!((logits[r * v + t] - want).abs() < 1e-5);
                }
            }
        }
    }

    /// Chunking changes nothing: over three chunks (the last one short),
    /// the fused pass gives the loss and gradients of the whole batch at
    /// once, computed here from the plain kernels on all rows.
    #[test]
    fn lm_head_crossentropy_in_chunks_equals_the_whole_batch() {
        let (n, c, v) = (2 * LM_HEAD_CHUNK + 37, 16, 61);
        let (h, wte) = (pseudo(n * c, 6), pseudo(v * c, 7));
        let targets: Vec<u32> = (0..n).map(|i| (i * 7 % v) as u32).collect();

        let mut probs = vec![0f32; n * v];
        let mut losses = vec![0f32; n];
        lm_head_forward(&mut probs, &h, &wte, n, c, v);
        let want_loss = crossentropy_forward(&mut probs, &mut losses, &targets, v);
        crossentropy_backward(&mut probs, &targets, v, 1.0 / n as f32);
        let (mut want_dh, mut want_dwte) = (vec![0f32; n * c], vec![0.5f32; v * c]);
        lm_head_backward(&mut want_dh, &mut want_dwte, &probs, &h, &wte, n, c, v);

        let (mut dh, mut dwte) = (vec![f32::NAN; n * c], vec![0.5f32; v * c]);
        let grads = HeadGrads {
            dhidden: &mut dh,
            dwte: &mut dwte,
        };
        let loss = lm_head_crossentropy(
            &h,
            &wte,
            &targets,
            &mut losses,
            c,
            v,
            Some(grads),
            &mut Vec::new(),
        );
        assert!(
            (loss - want_loss).abs() < 1e-6,
            "loss {loss} vs {want_loss}"
        );
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&dh, &want_dh), "dhidden differs");
        assert!(
            close(&dwte, &want_dwte),
            "dwte differs (it must be added to, not overwritten)"
        );
        let eval =
            lm_head_crossentropy(&h, &wte, &targets, &mut losses, c, v, None, &mut Vec::new());
        assert_eq!(eval, loss);
    }
}
