//! Matrix products for decode batches (5 to 64 rows: one token of each of
//! that many sequences). `gemm` repacks its right-hand operand on every
//! call, which at these sizes costs more than the product: per step that
//! would be the whole 50,257-row embedding and every layer matrix. These
//! kernels read the weights in place, in the order they lie in memory
//! (which the prefetchers follow), with register tiles of outputs:
//!
//! - `lm_head` (f32 embedding) and `rows_dot_f16` (packed f16 matrices,
//!   stored `[out, in]`): dot products with weight rows, a 4 x 2 tile per
//!   pair of rows;
//! - `conv1d`: `out[r][j] += inp[r] . w[:, j]` for a Conv1D weight
//!   `[in, out]`, a 6 x 16 tile per 16-column panel.
//!
//! Each returns `false` (and does nothing) where it has no fast path (no
//! AVX2, or widths that are not a multiple of 8 or 16); the caller then
//! uses `gemm`.

use super::simd::{level, Level};
use super::{aligned_chunks, DisjointPtr};
use rayon::prelude::*;

/// Up to this many rows a product counts as a decode batch.
pub const MAX_ROWS: usize = 64;

/// `logits[r * vocab + v] = hidden[r] . wte[v]` for `rows` rows of width
/// `c`.
pub fn lm_head(
    logits: &mut [f32],
    hidden: &[f32],
    wte: &[f32],
    rows: usize,
    c: usize,
    vocab: usize,
) -> bool {
    if level() < Level::Avx2Fma || !c.is_multiple_of(8) || rows == 0 || rows > MAX_ROWS {
        return false;
    }
    assert!(
        logits.len() >= rows * vocab && hidden.len() >= rows * c && wte.len() >= vocab * c,
        "batch::lm_head: shapes"
    );
    let out = DisjointPtr::new(logits);
    aligned_chunks(vocab, 2).for_each(|(v0, v1)| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA were detected (level); the shapes are asserted
        // above; this task writes columns v0..v1 only.
        unsafe {
            avx2::rows_dot::<avx2::F32, false>(
                out,
                hidden,
                wte.as_ptr() as *const u8,
                rows,
                c,
                vocab,
                v0,
                v1,
            )
        }
    });
    true
}

/// `out[r * n + j] += inp[r] . w[j]` for f16 weight rows `w` (`[n, k]`,
/// little-endian f16 bytes, the packed layout), widened in registers.
pub fn rows_dot_f16(
    out: &mut [f32],
    inp: &[f32],
    w: &[u8],
    rows: usize,
    k: usize,
    n: usize,
) -> bool {
    if level() < Level::Avx2Fma || !k.is_multiple_of(8) || rows == 0 || rows > MAX_ROWS {
        return false;
    }
    assert!(
        out.len() >= rows * n && inp.len() >= rows * k && w.len() >= n * k * 2,
        "batch::rows_dot_f16: shapes"
    );
    let dst = DisjointPtr::new(out);
    aligned_chunks(n, 2).for_each(|(v0, v1)| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in lm_head.
        unsafe {
            avx2::rows_dot::<avx2::F16, true>(dst, inp, w.as_ptr(), rows, k, n, v0, v1)
        }
    });
    true
}

/// `out[r * n + j] += inp[r * k + i] * w[i * n + j]` summed over `i`, for
/// `rows` rows.
pub fn conv1d(out: &mut [f32], inp: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> bool {
    if level() < Level::Avx2Fma || !n.is_multiple_of(16) || rows == 0 || rows > MAX_ROWS {
        return false;
    }
    assert!(
        out.len() >= rows * n && inp.len() >= rows * k && w.len() >= k * n,
        "batch::conv1d: shapes"
    );
    let dst = DisjointPtr::new(out);
    aligned_chunks(n, 16).for_each(|(j0, j1)| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in lm_head; this task writes columns j0..j1 only.
        unsafe {
            avx2::conv1d(dst, inp, w, rows, k, n, j0, j1)
        }
    });
    true
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::DisjointPtr;
    use std::arch::x86_64::*;

    /// How far ahead `lm_head` prefetches, in embedding rows.
    const PREFETCH_ROWS: usize = 8;

    /// The sums of eight vectors, as one vector: lane `i` is `sum(v[i])`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum8(v: &[__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(v[0], v[1]);
        let t1 = _mm256_hadd_ps(v[2], v[3]);
        let t2 = _mm256_hadd_ps(v[4], v[5]);
        let t3 = _mm256_hadd_ps(v[6], v[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        // u0 = [v0 v1 v2 v3 (low halves) | v0 v1 v2 v3 (high halves)].
        let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
        let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
        _mm256_add_ps(lo, hi)
    }

    /// How a weight row's elements become f32 lanes.
    pub trait Elem {
        const BYTES: usize;
        /// Eight elements from `p` (a byte pointer into the row).
        unsafe fn load8(p: *const u8) -> __m256;
    }

    pub struct F32;
    pub struct F16;

    impl Elem for F32 {
        const BYTES: usize = 4;
        #[inline(always)]
        unsafe fn load8(p: *const u8) -> __m256 {
            _mm256_loadu_ps(p as *const f32)
        }
    }

    impl Elem for F16 {
        const BYTES: usize = 2;
        #[inline(always)]
        unsafe fn load8(p: *const u8) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
    }

    /// Outputs `v0..v1` of `out[r][v] (+)= x[r] . w[v]` for weight rows of
    /// `k` elements (`v1 - v0` even but for the last chunk): each pair of
    /// rows meets every group of 4 input rows in a 4 x 2 register tile
    /// while it is in L1, so the weights stream from memory once, in order.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `k % 8 == 0`; the shapes hold; no other thread
    /// writes these outputs.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows_dot<E: Elem, const ACCUMULATE: bool>(
        out: DisjointPtr,
        x: &[f32],
        w: *const u8,
        rows: usize,
        k: usize,
        n: usize,
        v0: usize,
        v1: usize,
    ) {
        let xp = x.as_ptr();
        let row_bytes = k * E::BYTES;
        let mut v = v0;
        while v < v1 {
            // An odd last output is paired with itself; its twin is not stored.
            let v2 = (v + 1).min(v1 - 1);
            let w0 = w.add(v * row_bytes);
            let w1 = w.add(v2 * row_bytes);
            // The rows a few pairs ahead, so DRAM works while this pair is
            // multiplied (the tile is compute-heavy enough that the
            // hardware prefetchers alone fall behind).
            let ahead = v + PREFETCH_ROWS;
            if ahead + 2 <= v1 {
                let p = w.add(ahead * row_bytes) as *const i8;
                let mut off = 0;
                while off < 2 * row_bytes {
                    _mm_prefetch::<_MM_HINT_T0>(p.add(off));
                    off += 64;
                }
            }
            let mut r0 = 0;
            while r0 < rows {
                let xr = |i: usize| xp.add((r0 + i).min(rows - 1) * k);
                let (h0, h1, h2, h3) = (xr(0), xr(1), xr(2), xr(3));
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut i = 0;
                while i < k {
                    let a = E::load8(w0.add(i * E::BYTES));
                    let b = E::load8(w1.add(i * E::BYTES));
                    let t = _mm256_loadu_ps(h0.add(i));
                    acc[0] = _mm256_fmadd_ps(t, a, acc[0]);
                    acc[1] = _mm256_fmadd_ps(t, b, acc[1]);
                    let t = _mm256_loadu_ps(h1.add(i));
                    acc[2] = _mm256_fmadd_ps(t, a, acc[2]);
                    acc[3] = _mm256_fmadd_ps(t, b, acc[3]);
                    let t = _mm256_loadu_ps(h2.add(i));
                    acc[4] = _mm256_fmadd_ps(t, a, acc[4]);
                    acc[5] = _mm256_fmadd_ps(t, b, acc[5]);
                    let t = _mm256_loadu_ps(h3.add(i));
                    acc[6] = _mm256_fmadd_ps(t, a, acc[6]);
                    acc[7] = _mm256_fmadd_ps(t, b, acc[7]);
                    i += 8;
                }
                let mut sums = [0f32; 8];
                _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(&acc));
                for r in r0..(r0 + 4).min(rows) {
                    let put = |col: usize, val: f32| {
                        let o = out.at(r * n + col);
                        *o = if ACCUMULATE { *o + val } else { val };
                    };
                    put(v, sums[2 * (r - r0)]);
                    if v2 != v {
                        put(v2, sums[2 * (r - r0) + 1]);
                    }
                }
                r0 += 4;
            }
            v += 2;
        }
    }

    /// Columns `j0..j1` (multiples of 16) of a Conv1D product, accumulated
    /// into `out`.
    ///
    /// # Safety
    /// AVX2 and FMA; `n % 16 == 0`; the shapes hold; no other thread writes
    /// these columns.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn conv1d(
        out: DisjointPtr,
        inp: &[f32],
        w: &[f32],
        rows: usize,
        k: usize,
        n: usize,
        j0: usize,
        j1: usize,
    ) {
        let mut j = j0;
        while j < j1 {
            let mut r0 = 0;
            while r0 < rows {
                match rows - r0 {
                    1 => panel::<1>(out, inp, w, r0, k, n, j),
                    2 => panel::<2>(out, inp, w, r0, k, n, j),
                    3 => panel::<3>(out, inp, w, r0, k, n, j),
                    4 => panel::<4>(out, inp, w, r0, k, n, j),
                    5 => panel::<5>(out, inp, w, r0, k, n, j),
                    _ => panel::<6>(out, inp, w, r0, k, n, j),
                }
                r0 += 6;
            }
            j += 16;
        }
    }

    /// Rows `r0..r0 + R`, columns `j..j + 16`: `R x 2` accumulators.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panel<const R: usize>(
        out: DisjointPtr,
        inp: &[f32],
        w: &[f32],
        r0: usize,
        k: usize,
        n: usize,
        j: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let x = inp.as_ptr().add(r0 * k);
        let wp = w.as_ptr().add(j);
        for i in 0..k {
            // The next panel's line of this row, on the first pass.
            if r0 == 0 && j + 16 < n {
                _mm_prefetch::<_MM_HINT_T0>(wp.add(i * n + 16) as *const i8);
            }
            let b0 = _mm256_loadu_ps(wp.add(i * n));
            let b1 = _mm256_loadu_ps(wp.add(i * n + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let s = _mm256_broadcast_ss(&*x.add(r * k + i));
                a[0] = _mm256_fmadd_ps(s, b0, a[0]);
                a[1] = _mm256_fmadd_ps(s, b1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.at((r0 + r) * n + j);
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a[0]));
            _mm256_storeu_ps(o.add(8), _mm256_add_ps(_mm256_loadu_ps(o.add(8)), a[1]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::pseudo;
    use super::*;

    #[test]
    fn the_batch_kernels_equal_plain_products() {
        if level() < Level::Avx2Fma {
            eprintln!("skipped: no AVX2 on this machine");
            return;
        }
        for rows in [5, 7, 16, 64] {
            let (c, vocab) = (40, 37);
            let hidden = pseudo(rows * c, 1);
            let wte = pseudo(vocab * c, 2);
            let mut got = vec![0.0; rows * vocab];
            assert!(lm_head(&mut got, &hidden, &wte, rows, c, vocab));
            for r in 0..rows {
                for v in 0..vocab {
                    let want: f32 = (0..c).map(|i| hidden[r * c + i] * wte[v * c + i]).sum();
                    assert!(
                        (got[r * vocab + v] - want).abs() < 1e-4,
                        "head {rows} {r} {v}"
                    );
                }
            }
            let w16: Vec<u8> = wte
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect();
            let mut acc = vec![1.0; rows * vocab];
            assert!(rows_dot_f16(&mut acc, &hidden, &w16, rows, c, vocab));
            for (a, g) in acc.iter().zip(&got) {
                // f16 weights: a coarser match, plus the 1.0 it started from.
                assert!((a - 1.0 - g).abs() < 2e-2, "f16 {a} vs {g}");
            }
            let (k, n) = (24, 48);
            let inp = pseudo(rows * k, 3);
            let w = pseudo(k * n, 4);
            let start = pseudo(rows * n, 5);
            let mut out = start.clone();
            assert!(conv1d(&mut out, &inp, &w, rows, k, n));
            for r in 0..rows {
                for j in 0..n {
                    let want: f32 = start[r * n + j]
                        + (0..k).map(|i| inp[r * k + i] * w[i * n + j]).sum::<f32>();
                    assert!(
                        (out[r * n + j] - want).abs() < 1e-4,
                        "conv1d {rows} {r} {j}"
                    );
                }
            }
        }
    }
}
