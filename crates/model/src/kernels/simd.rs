//! The vector primitives the kernels are built from, each with a scalar
//! version and an AVX2+FMA version chosen at run time.
//!
//! `GPT2_SIMD=scalar` forces the scalar versions and `GPT2_SIMD=avx2` the
//! AVX2 ones where AVX-512 is present (the tests run every level and
//! compare them). The f32 primitives here have no AVX-512 versions (decode
//! is memory-bound and prefill runs in `gemm`); the packed-weight kernels
//! in `kernels::packed` do.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Scalar,
    Avx2Fma,
    /// AVX2+FMA plus AVX-512 F/BW/VL and VNNI (8-bit dot products).
    Avx512,
}

static LEVEL: AtomicU8 = AtomicU8::new(0); // 0 = not yet detected

/// The instruction set the kernels use on this machine.
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::Scalar,
        2 => Level::Avx2Fma,
        3 => Level::Avx512,
        _ => {
            let detected = detect();
            set_level(detected);
            detected
        }
    }
}

/// Overrides the detected level with at most what this CPU has, so this
/// can never select an unsupported instruction. Returns the level set.
pub fn set_level(level: Level) -> Level {
    let level = level.min(best_available());
    LEVEL.store(level as u8 + 1, Ordering::Relaxed);
    level
}

fn detect() -> Level {
    let best = best_available();
    match std::env::var("GPT2_SIMD")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        Ok("scalar") => Level::Scalar,
        Ok("avx2") => best.min(Level::Avx2Fma),
        _ => best,
    }
}

/// The highest level this CPU supports.
pub fn best_available() -> Level {
    if avx512_available() {
        Level::Avx512
    } else if avx2_available() {
        Level::Avx2Fma
    } else {
        Level::Scalar
    }
}

pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dispatches to `$avx(args)` when AVX2+FMA is selected, `$scalar(args)` otherwise.
macro_rules! dispatch {
    ($scalar:path, $avx:path, $($arg:expr),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if level() >= Level::Avx2Fma {
                // SAFETY: `level()` only reports Avx2Fma after run-time
                // detection of both features.
                return unsafe { $avx($($arg),*) };
            }
        }
        $scalar($($arg),*)
    }};
}

/// Sum of `a[i] * b[i]`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    dispatch!(scalar::dot, avx2::dot, a, b)
}

/// `y[j] += a * x[j]`.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    dispatch!(scalar::axpy, avx2::axpy, y, a, x)
}

/// Replaces `v[i]` by `exp(v[i] - max)` and returns their sum.
pub fn exp_shifted_sum(v: &mut [f32], max: f32) -> f32 {
    dispatch!(scalar::exp_shifted_sum, avx2::exp_shifted_sum, v, max)
}

/// GPT-2's GELU (the tanh approximation, `gelu_new`) in place.
pub fn gelu(v: &mut [f32]) {
    dispatch!(scalar::gelu, avx2::gelu, v)
}

/// `dinp[i] += dout[i] * gelu'(inp[i])`, GELU's backward pass.
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    assert!(
        inp.len() == dinp.len() && dout.len() == dinp.len(),
        "gelu_backward: lengths"
    );
    dispatch!(scalar::gelu_backward, avx2::gelu_backward, dinp, inp, dout)
}

/// Largest element (`-inf` for an empty slice).
pub fn max(v: &[f32]) -> f32 {
    dispatch!(scalar::max, avx2::max, v)
}

/// `out[i] += x . rows[i]` for consecutive rows of width `x.len()`.
pub fn dot_rows_add(x: &[f32], rows: &[f32], out: &mut [f32]) {
    dispatch!(scalar::dot_rows_add, avx2::dot_rows_add, x, rows, out)
}

/// One query's attention over `visible` cached positions: scores
/// `q . k_j * scale`, softmax, and `out = sum_j p_j v_j`. `keys` and
/// `values` are `[visible, q.len()]`; `scores` is scratch.
pub fn attend_row(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    dispatch!(
        scalar::attend_row,
        avx2::attend_row,
        q,
        keys,
        values,
        scale,
        scores,
        out
    )
}

/// Softmax of `v` in place.
pub fn softmax(v: &mut [f32]) {
    let max = max(v);
    let inv = 1.0 / exp_shifted_sum(v, max);
    v.iter_mut().for_each(|x| *x *= inv);
}

/// Kernels built from the primitives above, defined once and compiled into
/// both the scalar and the AVX2 module, where the primitive names resolve to
/// that module's versions (so the vector code inlines with one dispatch per
/// call instead of one per primitive).
macro_rules! composite_kernels {
    ($(#[$attr:meta])* $vis:vis $($unsafety:ident)?) => {
        /// `out[i] += x . rows[i]` for consecutive rows of width `x.len()`.
        $(#[$attr])*
        $vis $($unsafety)? fn dot_rows_add(x: &[f32], rows: &[f32], out: &mut [f32]) {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(x.len())) {
                *o += dot(x, row);
            }
        }

        /// One query's attention over the cached positions; see `super::attend_row`.
        $(#[$attr])*
        $vis $($unsafety)? fn attend_row(q: &[f32], keys: &[f32], values: &[f32], scale: f32, scores: &mut [f32], out: &mut [f32]) {
            let hd = q.len();
            key_scores(q, keys, scale, scores);
            let max = max(scores);
            let inv = 1.0 / exp_shifted_sum(scores, max);
            out.fill(0.0);
            for (&p, v) in scores.iter().zip(values.chunks_exact(hd)) {
                axpy(out, p * inv, v);
            }
        }
    };
}

pub const GELU_SCALE: f32 = 0.797_884_6; // sqrt(2 / pi)
pub const GELU_CUBIC: f32 = 0.044715;

pub mod scalar {
    use super::{GELU_CUBIC, GELU_SCALE};

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        // Eight partial sums, like the vector code, so both round alike.
        let mut acc = [0f32; 8];
        let chunks = a.len() / 8 * 8;
        for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
            for k in 0..8 {
                acc[k] += ca[k] * cb[k];
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for k in chunks..a.len() {
            sum += a[k] * b[k];
        }
        sum
    }

    /// `scores[j] = q . keys[j] * scale` for consecutive keys of width
    /// `q.len()`.
    pub fn key_scores(q: &[f32], keys: &[f32], scale: f32, scores: &mut [f32]) {
        for (s, k) in scores.iter_mut().zip(keys.chunks_exact(q.len())) {
            *s = dot(q, k) * scale;
        }
    }

    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (yj, xj) in y.iter_mut().zip(x) {
            *yj += a * xj;
        }
    }

    pub fn exp_shifted_sum(v: &mut [f32], max: f32) -> f32 {
        let mut sum = 0f32;
        for x in v.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        sum
    }

    /// 0.5 x (1 + tanh(u)) written as x * sigmoid(2u), which needs one exp.
    pub fn gelu(v: &mut [f32]) {
        for x in v.iter_mut() {
            let u = GELU_SCALE * (*x + GELU_CUBIC * *x * *x * *x);
            *x /= 1.0 + (-2.0 * u).exp();
        }
    }

    /// With s = sigmoid(2u) = (1 + tanh u) / 2, GELU's derivative
    /// 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u' is s + 2 x s (1 - s) u'.
    pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        for ((di, &x), &d) in dinp.iter_mut().zip(inp).zip(dout) {
            let u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
            let du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
            let s = 1.0 / (1.0 + (-2.0 * u).exp());
            *di += d * (s + 2.0 * x * s * (1.0 - s) * du);
        }
    }

    pub fn max(v: &[f32]) -> f32 {
        v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    composite_kernels!(pub);
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::{scalar, GELU_CUBIC, GELU_SCALE};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0x55>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// Requires AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc_k) in acc.iter_mut().enumerate() {
                let off = i + 8 * k;
                *acc_k = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(off)),
                    _mm256_loadu_ps(pb.add(off)),
                    *acc_k,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(sum);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    /// `scores[j] = q . keys[j] * scale`: one loop over the keys (a head
    /// is 32 to 128 wide, too short for a call per key).
    ///
    /// # Safety
    /// Requires AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn key_scores(q: &[f32], keys: &[f32], scale: f32, scores: &mut [f32]) {
        let hd = q.len();
        if !hd.is_multiple_of(8) {
            return scalar::key_scores(q, keys, scale, scores);
        }
        let n = scores.len().min(keys.len() / hd.max(1));
        let (pq, pk) = (q.as_ptr(), keys.as_ptr());
        for (j, s) in scores[..n].iter_mut().enumerate() {
            let kj = pk.add(j * hd);
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i < hd {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), _mm256_loadu_ps(kj.add(i)), acc);
                i += 8;
            }
            *s = hsum(acc) * scale;
        }
    }

    /// # Safety
    /// Requires AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let av = _mm256_set1_ps(a);
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let mut j = 0;
        while j + 32 <= n {
            for k in (0..32).step_by(8) {
                let (yp, xp) = (py.add(j + k), px.add(j + k));
                _mm256_storeu_ps(
                    yp,
                    _mm256_fmadd_ps(av, _mm256_loadu_ps(xp), _mm256_loadu_ps(yp)),
                );
            }
            j += 32;
        }
        while j + 8 <= n {
            _mm256_storeu_ps(
                py.add(j),
                _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(j)), _mm256_loadu_ps(py.add(j))),
            );
            j += 8;
        }
        scalar::axpy(&mut y[j..n], a, &x[j..n]);
    }

    /// exp(x) for a vector, Cephes' single-precision polynomial (about 1 ulp
    /// over the range that matters); inputs below -87.3 give 0.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp256(x: __m256) -> __m256 {
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.33));
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.37));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.33));
        let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(x, x),
            _mm256_add_ps(x, _mm256_set1_ps(1.0)),
        );
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(fx),
            _mm256_set1_epi32(127),
        ));
        let r = _mm256_mul_ps(y, _mm256_castsi256_ps(pow2));
        _mm256_andnot_ps(underflow, r)
    }

    /// # Safety
    /// Requires AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_sum(v: &mut [f32], max: f32) -> f32 {
        let n = v.len();
        let m = _mm256_set1_ps(max);
        let p = v.as_mut_ptr();
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        hsum(acc) + scalar::exp_shifted_sum(&mut v[i..], max)
    }

    /// # Safety
    /// Requires AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu(v: &mut [f32]) {
        let n = v.len();
        let p = v.as_mut_ptr();
        let (scale, cubic) = (_mm256_set1_ps(GELU_SCALE), _mm256_set1_ps(GELU_CUBIC));
        let (one, minus_two) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-2.0));
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(p.add(i));
            let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let u = _mm256_mul_ps(scale, _mm256_fmadd_ps(cubic, x3, x));
            let e = exp256(_mm256_mul_ps(minus_two, u));
            _mm256_storeu_ps(p.add(i), _mm256_div_ps(x, _mm256_add_ps(one, e)));
            i += 8;
        }
        scalar::gelu(&mut v[i..]);
    }

    /// # Safety
    /// Requires AVX2 and FMA; the three slices have one length (asserted
    /// by the caller).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        let n = dinp.len();
        let (scale, cubic) = (_mm256_set1_ps(GELU_SCALE), _mm256_set1_ps(GELU_CUBIC));
        let cubic3 = _mm256_set1_ps(3.0 * GELU_SCALE * GELU_CUBIC);
        let (one, two, minus_two) = (
            _mm256_set1_ps(1.0),
            _mm256_set1_ps(2.0),
            _mm256_set1_ps(-2.0),
        );
        let (pd, px, pg) = (dinp.as_mut_ptr(), inp.as_ptr(), dout.as_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(px.add(i));
            let xx = _mm256_mul_ps(x, x);
            let u = _mm256_mul_ps(scale, _mm256_fmadd_ps(cubic, _mm256_mul_ps(xx, x), x));
            let du = _mm256_fmadd_ps(cubic3, xx, scale);
            let s = _mm256_div_ps(one, _mm256_add_ps(one, exp256(_mm256_mul_ps(minus_two, u))));
            let slope = _mm256_mul_ps(
                _mm256_mul_ps(two, x),
                _mm256_mul_ps(s, _mm256_sub_ps(one, s)),
            );
            let grad = _mm256_fmadd_ps(slope, du, s);
            _mm256_storeu_ps(
                pd.add(i),
                _mm256_fmadd_ps(_mm256_loadu_ps(pg.add(i)), grad, _mm256_loadu_ps(pd.add(i))),
            );
            i += 8;
        }
        scalar::gelu_backward(&mut dinp[i..], &inp[i..], &dout[i..]);
    }

    composite_kernels!(
        /// # Safety
        /// Requires AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe
    );

    /// # Safety
    /// Requires AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn max(v: &[f32]) -> f32 {
        let n = v.len();
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_max_ps(acc, _mm256_loadu_ps(v.as_ptr().add(i)));
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes
            .iter()
            .chain(&v[i..])
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 8.0 - 4.0
            })
            .collect()
    }

    fn close(a: f32, b: f32, rel: f32) -> bool {
        (a - b).abs() <= rel * (1.0 + a.abs().max(b.abs()))
    }

    /// Every vector primitive agrees with its scalar twin, on lengths that
    /// exercise the remainders.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_matches_scalar() {
        if !avx2_available() {
            eprintln!("skipping: no AVX2+FMA on this machine");
            return;
        }
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 100, 768, 1027] {
            let (a, b) = (data(n, 1), data(n, 2));
            let d = unsafe { avx2::dot(&a, &b) };
            assert!(close(d, scalar::dot(&a, &b), 1e-5), "dot n={n}");
            let m = unsafe { avx2::max(&a) };
            assert_eq!(m, scalar::max(&a), "max n={n}");

            let (mut y1, mut y2) = (a.clone(), a.clone());
            scalar::axpy(&mut y1, 0.3, &b);
            unsafe { avx2::axpy(&mut y2, 0.3, &b) };
            assert!(
                y1.iter().zip(&y2).all(|(p, q)| close(*p, *q, 1e-6)),
                "axpy n={n}"
            );

            let (mut e1, mut e2) = (a.clone(), a.clone());
            let s1 = scalar::exp_shifted_sum(&mut e1, 1.5);
            let s2 = unsafe { avx2::exp_shifted_sum(&mut e2, 1.5) };
            assert!(close(s1, s2, 1e-6), "exp sum n={n}");
            assert!(
                e1.iter().zip(&e2).all(|(p, q)| close(*p, *q, 1e-6)),
                "exp n={n}"
            );

            let rows = data(3 * n, 3);
            let (mut d1, mut d2) = (vec![0.0; 3], vec![0.0; 3]);
            if n > 0 {
                scalar::dot_rows_add(&a, &rows, &mut d1);
                unsafe { avx2::dot_rows_add(&a, &rows, &mut d2) };
                assert!(
                    d1.iter().zip(&d2).all(|(p, q)| close(*p, *q, 1e-5)),
                    "dot_rows_add n={n}"
                );
                let (keys, values) = (data(5 * n, 4), data(5 * n, 5));
                let (mut s1, mut s2, mut o1, mut o2) =
                    (vec![0.0; 5], vec![0.0; 5], vec![0.0; n], vec![0.0; n]);
                scalar::attend_row(&a, &keys, &values, 0.125, &mut s1, &mut o1);
                unsafe { avx2::attend_row(&a, &keys, &values, 0.125, &mut s2, &mut o2) };
                assert!(
                    o1.iter().zip(&o2).all(|(p, q)| close(*p, *q, 1e-5)),
                    "attend_row n={n}"
                );
            }

            let (mut g1, mut g2) = (a.clone(), a.clone());
            scalar::gelu(&mut g1);
            unsafe { avx2::gelu(&mut g2) };
            assert!(
                g1.iter().zip(&g2).all(|(p, q)| close(*p, *q, 1e-6)),
                "gelu n={n}"
            );
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_exp_is_accurate_over_the_softmax_range() {
        if !avx2_available() {
            eprintln!("skipping: no AVX2+FMA on this machine");
            return;
        }
        let xs: Vec<f32> = (0..20000).map(|i| -100.0 + i as f32 * 0.0094).collect(); // up to 88
        let mut v = xs.clone();
        unsafe { avx2::exp_shifted_sum(&mut v, 0.0) };
        for (x, e) in xs.iter().zip(&v) {
            let want = x.exp();
            if *x < -87.33 {
                assert!(*e == 0.0 || (*e - want).abs() < 1e-37, "x={x}");
            } else {
                assert!(
                    (e - want).abs() <= 4.0 * f32::EPSILON * want,
                    "x={x}: {e} vs {want}"
                );
            }
        }
    }

    #[test]
    fn gelu_backward_matches_the_tanh_derivative() {
        let xs = data(1001, 8);
        let dout = data(1001, 9);
        let mut got = vec![0.25f32; xs.len()];
        gelu_backward(&mut got, &xs, &dout);
        for ((&x, &d), &g) in xs.iter().zip(&dout).zip(&got) {
            let (x, d) = (x as f64, d as f64);
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let t = (c * (x + 0.044715 * x.powi(3))).tanh();
            let slope =
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
            let want = 0.25 + d * slope;
            assert!(
                (g as f64 - want).abs() < 2e-6 * (1.0 + want.abs()),
                "x={x}: {g} vs {want}"
            );
        }
    }

    #[test]
    fn gelu_matches_the_tanh_formula() {
        for x in data(1000, 7) {
            let want = 0.5
                * x as f64
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt()
                        * (x as f64 + 0.044715 * (x as f64).powi(3)))
                    .tanh());
            let mut v = [x; 9];
            gelu(&mut v);
            for got in v {
                assert!(
                    (got as f64 - want).abs() < 1e-6 * (1.0 + want.abs()),
                    "x={x}: {got} vs {want}"
                );
            }
        }
    }
}
