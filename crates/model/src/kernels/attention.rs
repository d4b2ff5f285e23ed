//! Causal multi-head self-attention over the KV cache.

use super::{simd, DisjointPtr};
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

/// Writes the keys and values of every row into the cache, then for each
/// (segment, head) attends each query to all positions up to its own.
///
/// `qkv` is `[rows, 3C]` (query, key, value side by side), `out` is
/// `[rows, C]`, `scores` holds `segments.len() * n_head * capacity` floats.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    out: &mut [f32],
    qkv: &[f32],
    cache: &mut KvCache,
    layer: usize,
    segments: &[SegmentRows],
    scores: &mut [f32],
    n_head: usize,
    c: usize,
) {
    let hd = c / n_head;
    for seg in segments {
        for i in 0..seg.rows {
            let row = &qkv[(seg.row0 + i) * 3 * c..(seg.row0 + i + 1) * 3 * c];
            cache.store(seg.slot, layer, seg.past + i, &row[c..2 * c], &row[2 * c..]);
        }
    }
    let cap = cache.capacity();
    assert!(scores.len() >= segments.len() * n_head * cap, "attention_forward: scores buffer too small");
    assert!(out.len() >= segments.iter().map(|s| s.row0 + s.rows).max().unwrap_or(0) * c, "attention_forward: out too small");
    let cache = &*cache;
    let out_ptr = DisjointPtr(out.as_mut_ptr());
    let scale = 1.0 / (hd as f32).sqrt();
    scores[..segments.len() * n_head * cap]
        .par_chunks_mut(cap)
        .enumerate()
        .for_each(|(task, scores)| {
            let out_ptr = out_ptr;
            let (seg, h) = (&segments[task / n_head], task % n_head);
            let (keys, values) = cache.head(seg.slot, layer, h, seg.past + seg.rows);
            for i in 0..seg.rows {
                let row = seg.row0 + i;
                let q = &qkv[row * 3 * c + h * hd..row * 3 * c + (h + 1) * hd];
                let visible = seg.past + i + 1;
                let s = &mut scores[..visible];
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj = simd::dot(q, &keys[j * hd..(j + 1) * hd]) * scale;
                }
                let max = simd::max(s);
                let inv_sum = 1.0 / simd::exp_shifted_sum(s, max);
                // SAFETY: row < out rows (asserted) and head h's columns of
                // this row are written by this task only.
                let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(row * c + h * hd), hd) };
                o.fill(0.0);
                for (j, &p) in s.iter().enumerate() {
                    simd::axpy(o, p * inv_sum, &values[j * hd..(j + 1) * hd]);
                }
            }
        });
}
