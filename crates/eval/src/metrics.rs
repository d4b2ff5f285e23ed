//! lm-evaluation-harness's aggregations (lm_eval/api/metrics.py).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// `sample_stddev`: the standard deviation with n - 1 degrees of freedom.
pub fn sample_stddev(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 {
        return None;
    }
    let m = mean(xs);
    Some((xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt())
}

/// `mean_stderr`: the sample standard deviation over sqrt(n).
pub fn mean_stderr(xs: &[f64]) -> Option<f64> {
    sample_stddev(xs).map(|sd| sd / (xs.len() as f64).sqrt())
}

/// `perplexity`: exp of minus the mean log-likelihood per example.
pub fn perplexity(logliks: &[f64]) -> f64 {
    (-mean(logliks)).exp()
}

/// lm-eval's `bootstrap_stderr`: the standard deviation of `metric` over
/// resamples with replacement. lm-eval draws 100,000 resamples from
/// Python's `random`; this draws `iters` from a fixed-seed ChaCha8, so the
/// estimate agrees to Monte-Carlo error, not digit for digit.
pub fn bootstrap_stderr(xs: &[f64], metric: fn(&[f64]) -> f64, iters: usize) -> Option<f64> {
    if xs.len() < 2 || iters < 2 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut sample = vec![0.0; xs.len()];
    let values: Vec<f64> = (0..iters)
        .map(|_| {
            for s in sample.iter_mut() {
                *s = xs[rng.random_range(0..xs.len())];
            }
            metric(&sample)
        })
        .collect();
    sample_stddev(&values)
}

/// Resamples for bootstrap standard errors.
pub const BOOTSTRAP_ITERS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_of_a_mean() {
        let xs = [1.0, 0.0, 1.0, 1.0];
        // sample sd = 0.5, n = 4
        assert!((mean_stderr(&xs).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(mean_stderr(&[1.0]), None);
    }

    #[test]
    fn bootstrap_agrees_with_the_analytic_stderr_of_a_mean() {
        let xs: Vec<f64> = (0..400).map(|i| ((i * 37) % 101) as f64).collect();
        let analytic = mean_stderr(&xs).unwrap();
        let boot = bootstrap_stderr(&xs, mean, 4000).unwrap();
        assert!((boot / analytic - 1.0).abs() < 0.05, "{boot} vs {analytic}");
    }
}
