//! Matrix products over packed weights (`crate::packed`), computed in f32.
//!
//! Few rows (decode): every weight row is streamed once, split across the
//! threads by output, with one dot product per (row, output). q8_0 and q4_0
//! multiply 8-bit activations (each block of 32 quantized with its own
//! scale, as llama.cpp does) in integer arithmetic and scale each block's
//! integer sum in f32. Many rows (prefill, scoring): tiles of the weights
//! are widened to f32 and multiplied by `gemm`, so the activations stay f32.
//!
//! Each kernel exists as a scalar version and as AVX2 (+FMA, F16C) and
//! AVX-512 (+VNNI) versions chosen at run time; the tests compare them.

// The kernels index parallel accumulator arrays by the same loop counter.
#![allow(clippy::needless_range_loop)]

use super::simd::{level, Level};
use super::{column_chunks, gemm_accumulate, DisjointPtr, SKINNY_MAX_ROWS};
use crate::packed::{quantize_q8_block, Format, PackedMatrix, BLOCK};
use rayon::prelude::*;
use std::cell::RefCell;

/// Activation rows quantized to 8 bits per block of 32, for q8_0 and q4_0.
#[derive(Default)]
pub struct QuantizedRows {
    q: Vec<i8>,
    d: Vec<f32>,
    /// Sum of each block's `q` (q4_0 stores weights offset by 8).
    sum: Vec<i32>,
    cols: usize,
}

/// One quantized activation row.
#[derive(Clone, Copy)]
pub struct QRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub sum: &'a [i32],
}

impl QuantizedRows {
    /// Quantizes `rows` rows of width `cols` (a multiple of 32).
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        self.cols = cols;
        self.q.clear();
        self.d.clear();
        self.sum.clear();
        for block in x[..rows * cols].chunks_exact(BLOCK) {
            let (q, d) = quantize_q8_block(block);
            self.q.extend_from_slice(&q);
            self.d.push(d);
            self.sum.push(q.iter().map(|&v| v as i32).sum());
        }
    }

    pub fn row(&self, r: usize) -> QRow<'_> {
        let (k, b) = (self.cols, self.cols / BLOCK);
        QRow {
            q: &self.q[r * k..(r + 1) * k],
            d: &self.d[r * b..(r + 1) * b],
            sum: &self.sum[r * b..(r + 1) * b],
        }
    }
}

/// Reused buffers of the calling thread: quantized activations and a tile
/// of widened weights. Thread-local so a decode step allocates nothing.
#[derive(Default)]
struct Buffers {
    activations: QuantizedRows,
    tile: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Runs `f` with this thread's buffers (fresh ones if they are in use, as
/// when work stealing re-enters on the same thread).
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        Err(_) => f(&mut Buffers::default()),
    })
}

/// Weight rows widened per `gemm` call when many rows are multiplied.
const TILE_ROWS: usize = 1024;

/// `out[r][j] += inp[r] . w[j]` for `rows` rows: `inp` is `[rows, cols]`,
/// `out` is `[rows, w.rows()]`.
pub fn packed_matmul(out: &mut [f32], inp: &[f32], w: &PackedMatrix, rows: usize) {
    let (n, k) = (w.rows(), w.cols());
    assert!(
        out.len() >= rows * n && inp.len() >= rows * k,
        "packed_matmul: buffers too small"
    );
    if rows == 0 {
        return;
    }
    with_buffers(|b| {
        if rows <= SKINNY_MAX_ROWS {
            skinny(out, inp, w, rows, &mut b.activations);
        } else if w.format() == Format::F16
            && super::batch::rows_dot_f16(out, inp, w.data(), rows, k, n)
        {
            // A decode batch: f16 rows widened in registers.
        } else {
            tiled_gemm(out, inp, w, rows, &mut b.tile);
        }
    });
}

fn skinny(out: &mut [f32], inp: &[f32], w: &PackedMatrix, rows: usize, act: &mut QuantizedRows) {
    let (n, k) = (w.rows(), w.cols());
    if w.format().is_blocked() {
        act.quantize(inp, rows, k);
    }
    let kernel = chunk_kernel(level());
    let out_ptr = DisjointPtr::new(out);
    let act = &*act;
    column_chunks(n).for_each(|(j0, j1)| {
        let task = Chunk {
            w,
            x: inp,
            act,
            rows,
            j0,
            j1,
        };
        // SAFETY: the kernel was chosen for a level this CPU supports, and
        // it writes only outputs j0..j1 of each row, which this task owns.
        unsafe { kernel(task, out_ptr) };
    });
}

/// Widens `TILE_ROWS` weight rows at a time into an f32 tile laid out
/// `[k, tile]` (the Conv1D layout, which `gemm` runs about 30% faster on
/// than the transposed view: 875 vs 650 prefill tokens/s at 124M) and lets
/// `gemm` accumulate `inp @ tile` into the matching output columns.
fn tiled_gemm(out: &mut [f32], inp: &[f32], w: &PackedMatrix, rows: usize, buf: &mut Vec<f32>) {
    let (n, k) = (w.rows(), w.cols());
    let tile_rows = TILE_ROWS.min(n);
    if buf.len() < tile_rows * k {
        buf.resize(tile_rows * k, 0.0);
    }
    for j0 in (0..n).step_by(tile_rows) {
        let width = (j0 + tile_rows).min(n) - j0;
        unpack_transposed(w, j0, width, &mut buf[..width * k]);
        // SAFETY: dst is rows x width inside out (row stride n), lhs is
        // rows x k, rhs is the k x width tile, all row-major.
        unsafe {
            gemm_accumulate(
                rows,
                width,
                k,
                (out.as_mut_ptr().add(j0), n),
                (inp.as_ptr(), k),
                (buf.as_ptr(), width),
            )
        };
    }
}

/// Weight rows `j0..j0 + width` widened into `tile` as `[k, width]`: groups
/// of `GROUP` rows are widened side by side, then written out as runs of
/// `GROUP` consecutive floats per tile row, so no store is a lone scatter.
fn unpack_transposed(w: &PackedMatrix, j0: usize, width: usize, tile: &mut [f32]) {
    const GROUP: usize = 8;
    let k = w.cols();
    let unpack = unpack_kernel(level());
    let tile_ptr = DisjointPtr::new(tile);
    (0..width.div_ceil(GROUP)).into_par_iter().for_each_init(
        || vec![0f32; GROUP * k],
        |rows, g| {
            let (c0, c1) = (g * GROUP, ((g + 1) * GROUP).min(width));
            for (c, row) in (c0..c1).zip(rows.chunks_exact_mut(k)) {
                // SAFETY: chosen for a level this CPU supports.
                unsafe { unpack(w, j0 + c, row) };
            }
            for i in 0..k {
                // SAFETY: columns c0..c1 of tile row i lie inside the tile,
                // and only this group writes them.
                let dst = unsafe { tile_ptr.slice(i * width + c0, c1 - c0) };
                for (d, c) in dst.iter_mut().zip(0..) {
                    *d = rows[c * k + i];
                }
            }
        },
    );
}

/// One task of the few-row product: outputs `j0..j1` of every row.
#[derive(Clone, Copy)]
pub struct Chunk<'a> {
    pub w: &'a PackedMatrix,
    pub x: &'a [f32],
    pub act: &'a QuantizedRows,
    pub rows: usize,
    pub j0: usize,
    pub j1: usize,
}

type ChunkKernel = unsafe fn(Chunk<'_>, DisjointPtr);
type UnpackKernel = unsafe fn(&PackedMatrix, usize, &mut [f32]);

fn chunk_kernel(level: Level) -> ChunkKernel {
    #[cfg(target_arch = "x86_64")]
    match level {
        Level::Avx512 => return avx512::chunk,
        Level::Avx2Fma => return avx2::chunk,
        Level::Scalar => {}
    }
    let _ = level;
    scalar_chunk
}

fn unpack_kernel(level: Level) -> UnpackKernel {
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2Fma {
        return avx2::unpack_row;
    }
    let _ = level;
    scalar_unpack_row
}

/// # Safety
/// None beyond `Chunk`'s contract; `unsafe` only to share the kernel type.
unsafe fn scalar_chunk(c: Chunk<'_>, out: DisjointPtr) {
    unsafe { scalar::chunk(c, out) }
}

/// # Safety
/// None; `unsafe` only to share the kernel type.
unsafe fn scalar_unpack_row(w: &PackedMatrix, j: usize, out: &mut [f32]) {
    w.unpack_row(j, out)
}

/// The loop over a chunk's outputs, written once and compiled into each
/// kernel module, where `dot_*` resolve to that module's versions. One
/// weight row at a time: groups of two or four rows sharing each
/// activation load halved q8_0 and f16 decode on the machine this was
/// tuned on (2 cores, AVX-512; `gpt2 bench`, 124M shape), the loads of the
/// extra rows stalling, and left q4_0 unchanged.
macro_rules! chunk_loop {
    ($(#[$attr:meta])*) => {
        /// Outputs `c.j0..c.j1` of every row: `out[r][j] += x[r] . w[j]`.
        ///
        /// # Safety
        /// The CPU supports this module's instructions; `out` points at a
        /// `[c.rows, c.w.rows()]` buffer whose columns `j0..j1` no one else
        /// touches meanwhile.
        $(#[$attr])*
        pub unsafe fn chunk(c: super::Chunk<'_>, out: super::DisjointPtr) {
            let (n, k) = (c.w.rows(), c.w.cols());
            for j in c.j0..c.j1 {
                let (w, d) = (c.w.row(j), c.w.row_scales(j));
                for r in 0..c.rows {
                    let v = match c.w.format() {
                        Format::F16 => dot_f16(&c.x[r * k..(r + 1) * k], w),
                        Format::Bf16 => dot_bf16(&c.x[r * k..(r + 1) * k], w),
                        Format::Q8_0 => dot_q8(c.act.row(r), w, d),
                        Format::Q4_0 => dot_q4(c.act.row(r), w, d),
                    };
                    // SAFETY: r < rows and j < n lie inside `out`, and
                    // column j belongs to this chunk.
                    unsafe { *out.at(r * n + j) += v };
                }
            }
        }
    };
}

/// Asserts that a weight row (and its scales) and an activation row hold
/// `blocks` blocks, so the vector loops may read them unchecked.
#[inline]
fn check_block_row(x: QRow<'_>, w: &[u8], wd: &[f32], bytes_per_block: usize) -> usize {
    let blocks = x.d.len();
    assert!(x.q.len() >= blocks * BLOCK && x.sum.len() >= blocks);
    assert!(w.len() >= blocks * bytes_per_block && wd.len() >= blocks);
    blocks
}

/// The f16/bf16 dot product for one register width, written once: two
/// sums of `$lanes`-wide registers, so consecutive FMAs do not wait on
/// each other; the last weights (fewer than two registers) go to `$tail`,
/// the next narrower version.
macro_rules! dot_halves {
    ($(#[$attr:meta])* lanes: $lanes:expr, zero: $zero:ident, load: $load:ident,
     widen: $widen:ident, fmadd: $fmadd:ident, add: $add:ident, sum: $sum:ident,
     tail: $tail:path) => {
        #[inline]
        $(#[$attr])*
        pub(super) fn dot_halves(x: &[f32], w: &[u8], f16: bool) -> f32 {
            let n = x.len();
            assert!(w.len() >= 2 * n);
            let mut acc = [$zero(); 2];
            let mut i = 0;
            while i + 2 * $lanes <= n {
                for (h, acc) in acc.iter_mut().enumerate() {
                    let at = i + $lanes * h;
                    // SAFETY: at + lanes <= n: inside x and (asserted) w.
                    let (xv, wv) = unsafe {
                        ($load(x.as_ptr().add(at)), $widen(w.as_ptr().add(2 * at), f16))
                    };
                    *acc = $fmadd(xv, wv, *acc);
                }
                i += 2 * $lanes;
            }
            $tail(&x[i..], &w[2 * i..2 * n], f16) + $sum($add(acc[0], acc[1]))
        }

        /// # Safety
        /// The CPU must have this module's instruction sets.
        #[inline]
        $(#[$attr])*
        pub fn dot_f16(x: &[f32], w: &[u8]) -> f32 {
            dot_halves(x, w, true)
        }

        /// # Safety
        /// The CPU must have this module's instruction sets.
        #[inline]
        $(#[$attr])*
        pub fn dot_bf16(x: &[f32], w: &[u8]) -> f32 {
            dot_halves(x, w, false)
        }
    };
}

/// The q8_0 dot product, written once for both vector modules: one block
/// per 256-bit register, `$block_sums` (the module's way to sum a block's
/// 32 signed products into 8 i32 lanes) scaled and accumulated in f32.
/// One sum: splitting it into even and odd blocks (to break the FMA
/// dependency) measured slower here (q4_0 decode 184 vs 231 tokens/s,
/// best of 4 runs each, 124M shape).
macro_rules! dot_q8 {
    ($(#[$attr:meta])* block_sums: $block_sums:ident) => {
        /// # Safety
        /// The CPU must have this module's instruction sets.
        #[inline]
        $(#[$attr])*
        pub fn dot_q8(x: QRow<'_>, w: &[u8], wd: &[f32]) -> f32 {
            let blocks = check_block_row(x, w, wd, BLOCK);
            let mut acc = _mm256_setzero_ps();
            for b in 0..blocks {
                // SAFETY: block b lies inside the row and x (checked above).
                let (xv, wv) = unsafe {
                    (
                        _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i),
                        _mm256_loadu_si256(w.as_ptr().add(b * BLOCK) as *const __m256i),
                    )
                };
                let scale = _mm256_set1_ps(wd[b] * x.d[b]);
                let sums = _mm256_cvtepi32_ps($block_sums(wv, xv));
                acc = _mm256_fmadd_ps(sums, scale, acc);
            }
            hsum(acc)
        }
    };
}

pub mod scalar {
    use super::QRow;
    use crate::packed::{Format, BLOCK};

    pub fn dot_f16(x: &[f32], w: &[u8]) -> f32 {
        x.iter()
            .zip(w.chunks_exact(2))
            .map(|(x, b)| x * half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .sum()
    }

    pub fn dot_bf16(x: &[f32], w: &[u8]) -> f32 {
        x.iter()
            .zip(w.chunks_exact(2))
            .map(|(x, b)| x * f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .sum()
    }

    /// f16 or bf16 by `f16` (the vector versions' tail).
    pub fn dot_halves(x: &[f32], w: &[u8], f16: bool) -> f32 {
        if f16 {
            dot_f16(x, w)
        } else {
            dot_bf16(x, w)
        }
    }

    pub fn dot_q8(x: QRow<'_>, w: &[u8], wd: &[f32]) -> f32 {
        let mut sum = 0f32;
        for (b, &d) in wd.iter().enumerate() {
            let xs = &x.q[b * BLOCK..(b + 1) * BLOCK];
            let ws = &w[b * BLOCK..(b + 1) * BLOCK];
            let dot: i32 = xs
                .iter()
                .zip(ws)
                .map(|(&a, &w)| a as i32 * w as i8 as i32)
                .sum();
            sum += dot as f32 * (d * x.d[b]);
        }
        sum
    }

    pub fn dot_q4(x: QRow<'_>, w: &[u8], wd: &[f32]) -> f32 {
        let mut sum = 0f32;
        for (b, &d) in wd.iter().enumerate() {
            let xs = &x.q[b * BLOCK..(b + 1) * BLOCK];
            let ws = &w[b * BLOCK / 2..(b + 1) * BLOCK / 2];
            let mut dot = -8 * x.sum[b];
            for (e, &byte) in ws.iter().enumerate() {
                dot += (byte & 0x0F) as i32 * xs[e] as i32;
                dot += (byte >> 4) as i32 * xs[e + BLOCK / 2] as i32;
            }
            sum += dot as f32 * (d * x.d[b]);
        }
        sum
    }

    chunk_loop!();
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::{check_block_row, QRow};
    use crate::packed::{unpack_halves, Format, PackedMatrix, BLOCK};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0x55>(s, s)))
    }

    /// Eight weights at `p` widened to f32: f16, or bf16 (the top half of
    /// an f32).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_halves(p: *const u8, f16: bool) -> __m256 {
        // SAFETY: the caller guarantees 16 readable bytes at p.
        let half = unsafe { _mm_loadu_si128(p as *const __m128i) };
        if f16 {
            _mm256_cvtph_ps(half)
        } else {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(half)))
        }
    }

    dot_halves!(#[target_feature(enable = "avx2,fma,f16c")]
        lanes: 8, zero: _mm256_setzero_ps, load: _mm256_loadu_ps, widen: load_halves,
        fmadd: _mm256_fmadd_ps, add: _mm256_add_ps, sum: hsum, tail: super::scalar::dot_halves);

    /// The 32 signed products of one q8 block summed into 8 i32 lanes:
    /// `maddubs` needs an unsigned operand, so the weight's sign moves onto
    /// the activation (|w| <= 128 and |x| <= 127 keep the i16 pairs exact).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_block_sums(w: __m256i, x: __m256i) -> __m256i {
        let products = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(products, _mm256_set1_epi16(1))
    }

    /// A q4 block's 16 bytes as 32 unsigned nibbles in element order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn q4_nibbles(bytes: __m128i) -> __m256i {
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(bytes, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// `-8 * sum` in lane 0, zeros elsewhere: q4's offset, folded into the
    /// block's integer sum so it stays exact.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn q4_offset(sum: i32) -> __m256i {
        _mm256_zextsi128_si256(_mm_cvtsi32_si128(-8 * sum))
    }

    dot_q8!(#[target_feature(enable = "avx2,fma,f16c")] block_sums: q8_block_sums);

    /// # Safety
    /// The CPU must have this module's instruction sets.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_q4(x: QRow<'_>, w: &[u8], wd: &[f32]) -> f32 {
        let blocks = check_block_row(x, w, wd, BLOCK / 2);
        let ones = _mm256_set1_epi16(1);
        // One sum, as in dot_q8.
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            // SAFETY: block b lies inside the row and x (checked above).
            let (xv, bytes) = unsafe {
                (
                    _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK) as *const __m256i),
                    _mm_loadu_si128(w.as_ptr().add(b * BLOCK / 2) as *const __m128i),
                )
            };
            let products = _mm256_maddubs_epi16(q4_nibbles(bytes), xv);
            let sums = _mm256_add_epi32(_mm256_madd_epi16(products, ones), q4_offset(x.sum[b]));
            let scale = _mm256_set1_ps(wd[b] * x.d[b]);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
        }
        hsum(acc)
    }

    /// Row `j` of `w` widened to f32.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn unpack_row(w: &PackedMatrix, j: usize, out: &mut [f32]) {
        let (bytes, scales, k) = (w.row(j), w.row_scales(j), w.cols());
        assert!(out.len() >= k && bytes.len() >= w.format().row_bytes(k));
        let (po, pb) = (out.as_mut_ptr(), bytes.as_ptr());
        // SAFETY (all arms): every load and store stays inside the row's k
        // weights and `out`'s k floats (blocked formats have k % 32 == 0;
        // f16/bf16 leave the last k % 8 to the scalar code).
        unsafe {
            match w.format() {
                format @ (Format::F16 | Format::Bf16) => {
                    let mut i = 0;
                    while i + 8 <= k {
                        _mm256_storeu_ps(
                            po.add(i),
                            load_halves(pb.add(2 * i), format == Format::F16),
                        );
                        i += 8;
                    }
                    unpack_halves(format, &bytes[2 * i..2 * k], &mut out[i..k]);
                }
                Format::Q8_0 => {
                    for (b, &d) in scales.iter().enumerate() {
                        let dv = _mm256_set1_ps(d);
                        for h in 0..4 {
                            let at = b * BLOCK + 8 * h;
                            let q = _mm_loadl_epi64(pb.add(at) as *const __m128i);
                            let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                            _mm256_storeu_ps(po.add(at), _mm256_mul_ps(v, dv));
                        }
                    }
                }
                Format::Q4_0 => {
                    let eight = _mm256_set1_epi32(8);
                    for (b, &d) in scales.iter().enumerate() {
                        let dv = _mm256_set1_ps(d);
                        let nibbles =
                            q4_nibbles(_mm_loadu_si128(pb.add(b * BLOCK / 2) as *const __m128i));
                        let mut lanes = [0u8; BLOCK];
                        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, nibbles);
                        for h in 0..4 {
                            let q = _mm_loadl_epi64(lanes.as_ptr().add(8 * h) as *const __m128i);
                            let v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(q), eight);
                            _mm256_storeu_ps(
                                po.add(b * BLOCK + 8 * h),
                                _mm256_mul_ps(_mm256_cvtepi32_ps(v), dv),
                            );
                        }
                    }
                }
            }
        }
    }

    chunk_loop!(#[target_feature(enable = "avx2,fma,f16c")]);
}

/// AVX-512: 16-wide f16 and bf16 widening, and VNNI's `vpdpbusd` (four
/// u8 x i8 products summed into each i32 lane in one instruction) for q8_0
/// and q4_0 on 256-bit registers, one block per register.
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use super::avx2::hsum;
    use super::{check_block_row, QRow};
    use crate::packed::{Format, BLOCK};
    use std::arch::x86_64::*;

    dot_halves!(#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        lanes: 16, zero: _mm512_setzero_ps, load: _mm512_loadu_ps, widen: load_halves16,
        fmadd: _mm512_fmadd_ps, add: _mm512_add_ps, sum: _mm512_reduce_add_ps,
        tail: super::avx2::dot_halves);

    /// Sixteen weights at `p` widened to f32 (see `avx2::load_halves`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn load_halves16(p: *const u8, f16: bool) -> __m512 {
        // SAFETY: the caller guarantees 32 readable bytes at p.
        let half = unsafe { _mm256_loadu_si256(p as *const __m256i) };
        if f16 {
            _mm512_cvtph_ps(half)
        } else {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
        }
    }

    /// A q8 block's 32 signed products summed into 8 i32 lanes by VNNI
    /// (`vpdpbusd` wants an unsigned operand: the weight's sign moves onto
    /// the activation, as in the AVX2 version).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn q8_block_sums(w: __m256i, x: __m256i) -> __m256i {
        let (aw, sx) = (_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx)
    }

    dot_q8!(#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        block_sums: q8_block_sums);

    /// Two blocks per 512-bit register: the nibbles of blocks b and b + 1
    /// in element order, one `vpdpbusd` for both, and each block's scale
    /// spread over its eight lanes: half the instructions per weight of one
    /// block per ymm register. (Measured on this 2-core VM the two were
    /// within its noise, about 190-250 tokens/s of q4_0 decode at 124M; a
    /// software prefetch 1 KiB ahead did not help either.)
    ///
    /// # Safety
    /// The CPU must have this module's instruction sets.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub fn dot_q4(x: QRow<'_>, w: &[u8], wd: &[f32]) -> f32 {
        let blocks = check_block_row(x, w, wd, BLOCK / 2);
        let mask = _mm256_set1_epi8(0x0F);
        // Lanes 0-7 take element 0 (block b), lanes 8-15 element 1 (b + 1).
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut acc = _mm512_setzero_ps();
        let mut b = 0;
        while b + 2 <= blocks {
            // SAFETY (all loads here): blocks b and b + 1 lie inside the
            // row, its scales and the activations (checked above).
            let (xv, sums2, xd2, v, wd2) = unsafe {
                (
                    _mm512_loadu_si512(x.q.as_ptr().add(b * BLOCK) as *const __m512i),
                    _mm_loadl_epi64(x.sum.as_ptr().add(b) as *const __m128i),
                    _mm_castsi128_ps(_mm_loadl_epi64(x.d.as_ptr().add(b) as *const __m128i)),
                    _mm256_loadu_si256(w.as_ptr().add(b * BLOCK / 2) as *const __m256i),
                    _mm_castsi128_ps(_mm_loadl_epi64(wd.as_ptr().add(b) as *const __m128i)),
                )
            };
            // q4_0 stores w + 8: subtract 8 * sum(x) of each block, in
            // lane 0 of its eight.
            let minus_8_sum = _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32::<3>(sums2));
            let offset =
                _mm512_maskz_permutexvar_epi32(0x0101, spread, _mm512_castsi128_si512(minus_8_sum));
            let lo = _mm256_and_si256(v, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
            // [lo b, lo b+1, hi b, hi b+1] -> [lo b, hi b, lo b+1, hi b+1]
            let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let nibbles = _mm512_shuffle_i64x2::<0b11_01_10_00>(both, both);
            let sums = _mm512_dpbusd_epi32(offset, nibbles, xv);
            let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(wd2, xd2)));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc);
            b += 2;
        }
        let mut out = _mm512_reduce_add_ps(acc);
        if b < blocks {
            let tail = QRow {
                q: &x.q[b * BLOCK..],
                d: &x.d[b..],
                sum: &x.sum[b..],
            };
            out += super::avx2::dot_q4(tail, &w[b * BLOCK / 2..], &wd[b..]);
        }
        out
    }

    chunk_loop!(#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::best_available;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// f64 reference over the unpacked weights and, for blocked formats,
    /// the dequantized activations the kernels actually multiply.
    fn reference(w: &PackedMatrix, x: &[f32], rows: usize, quantized: bool) -> Vec<f64> {
        let (n, k) = (w.rows(), w.cols());
        let wf = w.unpack();
        let mut act = QuantizedRows::default();
        act.quantize(x, rows, k);
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            let xr: Vec<f64> = if quantized {
                let q = act.row(r);
                (0..k)
                    .map(|i| q.q[i] as f64 * q.d[i / BLOCK] as f64)
                    .collect()
            } else {
                x[r * k..(r + 1) * k].iter().map(|&v| v as f64).collect()
            };
            for j in 0..n {
                out[r * n + j] = (0..k).map(|i| xr[i] * wf[j * k + i] as f64).sum();
            }
        }
        out
    }

    fn run(level: Level, w: &PackedMatrix, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0.25f32; rows * w.rows()];
        let mut act = QuantizedRows::default();
        if w.format().is_blocked() {
            act.quantize(x, rows, w.cols());
        }
        let c = Chunk {
            w,
            x,
            act: &act,
            rows,
            j0: 0,
            j1: w.rows(),
        };
        // SAFETY: only levels the CPU has are passed; out is rows x n.
        unsafe { chunk_kernel(level)(c, DisjointPtr::new(&mut out)) };
        out
    }

    /// Every level's few-row kernel, every format, against an f64 product
    /// (and so against each other); odd widths exercise the f16 tails.
    #[test]
    fn every_simd_level_matches_the_scalar_kernels() {
        let levels: Vec<Level> = [Level::Scalar, Level::Avx2Fma, Level::Avx512]
            .into_iter()
            .filter(|&l| l <= best_available())
            .collect();
        eprintln!("testing levels {levels:?}");
        for format in Format::ALL {
            for &(rows, n, k) in &[(1, 7, 64), (3, 33, 96), (4, 5, 768), (2, 3, 40)] {
                if format.is_blocked() && k % BLOCK != 0 {
                    continue;
                }
                let w = PackedMatrix::pack(format, &data(n * k, 1), n, k).unwrap();
                let x = data(rows * k, 2);
                let want = reference(&w, &x, rows, format.is_blocked());
                for &level in &levels {
                    let got = run(level, &w, &x, rows);
                    for (g, e) in got.iter().zip(&want) {
                        let e = e + 0.25;
                        assert!(
                            (*g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()) * (k as f64).sqrt(),
                            "{format:?} {level:?} rows={rows} n={n} k={k}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simd_unpack_matches_the_scalar_one() {
        if best_available() < Level::Avx2Fma {
            eprintln!("skipping: no AVX2 on this machine");
            return;
        }
        for format in Format::ALL {
            for k in [32, 64, 40] {
                if format.is_blocked() && k % BLOCK != 0 {
                    continue;
                }
                let w = PackedMatrix::pack(format, &data(3 * k, 3), 3, k).unwrap();
                for j in 0..3 {
                    let (mut a, mut b) = (vec![0f32; k], vec![0f32; k]);
                    w.unpack_row(j, &mut a);
                    // SAFETY: AVX2 is present (checked above).
                    unsafe { unpack_kernel(Level::Avx2Fma)(&w, j, &mut b) };
                    assert_eq!(a, b, "{format:?} k={k} row {j}");
                }
            }
        }
    }

    /// Both paths of `packed_matmul` (few rows, tiled gemm) give the f32
    /// product of the unpacked weights, up to activation quantization.
    #[test]
    fn packed_matmul_paths_agree_with_the_unpacked_product() {
        for format in Format::ALL {
            let (n, k) = (TILE_ROWS + 37, 64);
            let w = PackedMatrix::pack(format, &data(n * k, 4), n, k).unwrap();
            for rows in [1, SKINNY_MAX_ROWS + 3] {
                let x = data(rows * k, 5);
                let quantized = format.is_blocked() && rows <= SKINNY_MAX_ROWS;
                let want = reference(&w, &x, rows, quantized);
                let mut out = vec![0f32; rows * n];
                packed_matmul(&mut out, &x, &w, rows);
                for (g, e) in out.iter().zip(&want) {
                    assert!(
                        (*g as f64 - e).abs() < 1e-4,
                        "{format:?} rows={rows}: {g} vs {e}"
                    );
                }
            }
        }
    }
}
