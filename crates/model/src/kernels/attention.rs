//! Causal multi-head self-attention: over the KV cache for inference
//! ([`cached_attention_forward`]), and over whole sequences with the
//! probabilities kept, forward and backward, for training
//! ([`attention_forward`], [`attention_backward`]).
//!
//! Inference: each (sequence, head) pair is one parallel task. A few new rows (decode)
//! attend one query at a time with vector kernels; many rows (prefill,
//! scoring) go through `gemm` in tiles of queries, each tile multiplying
//! only the keys its last row can see, so the causal mask costs at most
//! one tile's triangle.

use super::{gemm_strided, op, simd, DisjointPtr};
use crate::cache::KvCache;
use rayon::prelude::*;

/// One sequence's part of a batch: its cache slot, its first row in the
/// batch, how many rows it has, and how many positions the cache held
/// before this step.
#[derive(Debug, Clone, Copy)]
pub struct SegmentRows {
    pub slot: usize,
    pub row0: usize,
    pub rows: usize,
    pub past: usize,
}

/// Queries per `gemm` tile, and the fewest new rows worth a `gemm`.
const TILE: usize = 64;
const GEMM_MIN_ROWS: usize = 16;

/// Scratch floats one task needs: a tile of score rows when any segment is
/// long enough for the tiled path, else one row.
pub fn scores_per_task(max_rows: usize, capacity: usize) -> usize {
    if max_rows >= GEMM_MIN_ROWS {
        TILE * capacity
    } else {
        capacity
    }
}

/// Writes the keys and values of every row into the cache, then for each
/// (segment, head) attends each query to all positions up to its own.
///
/// `qkv` is `[rows, 3C]` (query, key, value side by side), `out` is
/// `[rows, C]`, `scores` holds `segments.len() * n_head` blocks of
/// `scores_per_task(..)` floats.
#[allow(clippy::too_many_arguments)]
pub fn cached_attention_forward(
    out: &mut [f32],
    qkv: &[f32],
    cache: &mut KvCache,
    layer: usize,
    segments: &[SegmentRows],
    scores: &mut [f32],
    n_head: usize,
    c: usize,
) {
    for seg in segments {
        for i in 0..seg.rows {
            let row = &qkv[(seg.row0 + i) * 3 * c..(seg.row0 + i + 1) * 3 * c];
            cache.store(seg.slot, layer, seg.past + i, &row[c..2 * c], &row[2 * c..]);
        }
    }
    let max_rows = segments.iter().map(|s| s.rows).max().unwrap_or(0);
    let per_task = scores_per_task(max_rows, cache.capacity());
    let tasks = segments.len() * n_head;
    assert!(
        scores.len() >= tasks * per_task,
        "cached_attention_forward: scores buffer too small"
    );
    assert!(
        out.len() >= segments.iter().map(|s| s.row0 + s.rows).max().unwrap_or(0) * c,
        "cached_attention_forward: out too small"
    );
    assert!(
        qkv.len() >= out.len() / c * 3 * c,
        "cached_attention_forward: qkv too small"
    );
    let cache = &*cache;
    let out_ptr = DisjointPtr::new(out);
    let head = Head {
        hd: c / n_head,
        c,
        scale: 1.0 / ((c / n_head) as f32).sqrt(),
        capacity: cache.capacity(),
    };
    scores[..tasks * per_task]
        .par_chunks_mut(per_task)
        .enumerate()
        .for_each(|(task, scores)| {
            let (seg, h) = (&segments[task / n_head], task % n_head);
            let (keys, values) = cache.head(seg.slot, layer, h, seg.past + seg.rows);
            if seg.rows >= GEMM_MIN_ROWS {
                head.attend_tiled(seg, h, qkv, keys, values, scores, out_ptr);
            } else {
                head.attend_rows(seg, h, qkv, keys, values, scores, out_ptr);
            }
        });
}

struct Head {
    hd: usize,
    c: usize,
    scale: f32,
    capacity: usize,
}

impl Head {
    /// Head `h`'s columns of one output row.
    fn out_row<'o>(&self, out: DisjointPtr, row: usize, h: usize) -> &'o mut [f32] {
        // SAFETY: every task writes only head h's columns of its own
        // segment's rows, which lie inside `out` (asserted by the caller).
        unsafe { out.slice(row * self.c + h * self.hd, self.hd) }
    }

    fn query<'q>(&self, qkv: &'q [f32], row: usize, h: usize) -> &'q [f32] {
        &qkv[row * 3 * self.c + h * self.hd..row * 3 * self.c + (h + 1) * self.hd]
    }

    #[allow(clippy::too_many_arguments)]
    fn attend_rows(
        &self,
        seg: &SegmentRows,
        h: usize,
        qkv: &[f32],
        keys: &[f32],
        values: &[f32],
        scores: &mut [f32],
        out: DisjointPtr,
    ) {
        for i in 0..seg.rows {
            let visible = seg.past + i + 1;
            let n = visible * self.hd;
            simd::attend_row(
                self.query(qkv, seg.row0 + i, h),
                &keys[..n],
                &values[..n],
                self.scale,
                &mut scores[..visible],
                self.out_row(out, seg.row0 + i, h),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attend_tiled(
        &self,
        seg: &SegmentRows,
        h: usize,
        qkv: &[f32],
        keys: &[f32],
        values: &[f32],
        scores: &mut [f32],
        out: DisjointPtr,
    ) {
        let (hd, cap) = (self.hd, self.capacity);
        for t0 in (0..seg.rows).step_by(TILE) {
            let tr = TILE.min(seg.rows - t0);
            let visible = seg.past + t0 + tr;
            let q = &qkv[(seg.row0 + t0) * 3 * self.c + h * hd..];
            // SAFETY: S is tr x visible with row stride cap inside `scores`
            // (TILE * cap); Q rows are read with stride 3C inside qkv; K is
            // visible x hd inside `keys`.
            unsafe {
                gemm::gemm(
                    tr,
                    visible,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    cap as isize,
                    false,
                    q.as_ptr(),
                    1,
                    3 * self.c as isize,
                    keys.as_ptr(),
                    hd as isize,
                    1,
                    0.0,
                    self.scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for i in 0..tr {
                let row = &mut scores[i * cap..i * cap + visible];
                let own = seg.past + t0 + i + 1;
                simd::softmax(&mut row[..own]);
                row[own..].fill(0.0);
            }
            let o = self.out_row(out, seg.row0 + t0, h).as_mut_ptr();
            // SAFETY: O is tr rows of hd floats at row stride C starting at
            // this head's column of the tile's first row (see `out_row`);
            // P is tr x visible (stride cap); V is visible x hd.
            unsafe {
                gemm::gemm(
                    tr,
                    hd,
                    visible,
                    o,
                    1,
                    self.c as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    cap as isize,
                    values.as_ptr(),
                    1,
                    hd as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
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
                gemm_strided(
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
                gemm_strided(
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
                gemm_strided(
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
                gemm_strided(
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
                gemm_strided(
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
                gemm_strided(
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
