//! LayerNorm, forward and backward, shared by inference and training:
//! `(x - mean) / sqrt(var + eps) * w + b` over each row of width `c`, with
//! GPT-2's epsilon.

use crate::config::LAYER_NORM_EPSILON;
use rayon::prelude::*;

/// Each row's mean and 1/std, which a training forward pass saves for
/// [`layernorm_backward`].
pub struct RowStats<'a> {
    pub mean: &'a mut [f32],
    pub rstd: &'a mut [f32],
}

/// Rows from which the forward pass runs in parallel.
const PARALLEL_ROWS: usize = 16;

/// LayerNorm of one row; returns its (mean, 1/std). Statistics in f64: the
/// residual stream of a deep model can be large, and these two sums set
/// the precision of everything after them.
pub fn layernorm_row(out: &mut [f32], x: &[f32], weight: &[f32], bias: &[f32]) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (v as f64 - mean) * (v as f64 - mean))
        .sum::<f64>()
        / n;
    let rstd = 1.0 / (var + LAYER_NORM_EPSILON as f64).sqrt();
    for (((o, x), w), b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = ((*x as f64 - mean) * rstd) as f32 * w + b;
    }
    (mean as f32, rstd as f32)
}

/// LayerNorm of the first `rows` rows of `inp` into `out`; with `stats`
/// (training), each row's mean and 1/std are saved.
pub fn layernorm_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows: usize,
    c: usize,
    stats: Option<RowStats<'_>>,
) {
    let (out, inp) = (&mut out[..rows * c], &inp[..rows * c]);
    match stats {
        Some(RowStats { mean, rstd }) => out
            .par_chunks_mut(c)
            .zip(inp.par_chunks(c))
            .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
            .for_each(|((o, x), (m, r))| (*m, *r) = layernorm_row(o, x, weight, bias)),
        None if rows >= PARALLEL_ROWS => {
            out.par_chunks_mut(c)
                .zip(inp.par_chunks(c))
                .for_each(|(o, x)| {
                    layernorm_row(o, x, weight, bias);
                })
        }
        None => out.chunks_mut(c).zip(inp.chunks(c)).for_each(|(o, x)| {
            layernorm_row(o, x, weight, bias);
        }),
    }
}

/// Adds the gradients of one LayerNorm into `dinp`, `dw` and `db`, from the
/// rows' saved statistics.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    for (((di, d), x), (&m, &r)) in dinp
        .chunks_exact_mut(c)
        .zip(dout.chunks_exact(c))
        .zip(inp.chunks_exact(c))
        .zip(mean.iter().zip(rstd))
    {
        let (mut dnorm_mean, mut dnorm_norm_mean) = (0f32, 0f32);
        for k in 0..c {
            let norm = (x[k] - m) * r;
            let dnorm = weight[k] * d[k];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= c as f32;
        dnorm_norm_mean /= c as f32;
        for k in 0..c {
            let norm = (x[k] - m) * r;
            let dnorm = weight[k] * d[k];
            db[k] += d[k];
            dw[k] += norm * d[k];
            di[k] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::pseudo;

    #[test]
    fn layernorm_normalises_each_row() {
        let (rows, c) = (20, 48);
        let inp: Vec<f32> = pseudo(rows * c, 9).iter().map(|x| x * 10.0 + 3.0).collect();
        let mut out = vec![0f32; rows * c];
        let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
        let stats = RowStats {
            mean: &mut mean,
            rstd: &mut rstd,
        };
        layernorm_forward(
            &mut out,
            &inp,
            &vec![2.0; c],
            &vec![0.5; c],
            rows,
            c,
            Some(stats),
        );
        let mut again = vec![0f32; rows * c];
        layernorm_forward(
            &mut again,
            &inp,
            &vec![2.0; c],
            &vec![0.5; c],
            rows,
            c,
            None,
        );
        assert_eq!(out, again, "saving the statistics changes nothing");
        for (row, x) in out.chunks(c).zip(inp.chunks(c)) {
            let m = row.iter().sum::<f32>() / c as f32;
            let var = row.iter().map(|v| (v - m).powi(2)).sum::<f32>() / c as f32;
            assert!(
                (m - 0.5).abs() < 1e-4 && (var - 4.0).abs() < 1e-3,
                "{m} {var}"
            );
            let want = x.iter().sum::<f32>() / c as f32;
            assert!(mean.iter().any(|&s| (s - want).abs() < 1e-4));
        }
    }
}
