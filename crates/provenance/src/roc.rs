//! Calibration and evaluation of detectors: thresholds at a target
//! false-positive rate, AUROC, true-positive rate at a fixed
//! false-positive rate, and bootstrap confidence intervals. Scores are
//! oriented so that larger means "more machine-like".

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The area under the ROC curve: the probability that a random machine
/// text scores above a random human one, ties counting one half
/// (Mann-Whitney U over n_h * n_m pairs).
pub fn auroc(human: &[f64], machine: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = human
        .iter()
        .map(|&s| (s, false))
        .chain(machine.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the machine texts' (mid-)ranks.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0; // ranks i+1..=j
        rank_sum += mid * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (nh, nm) = (human.len() as f64, machine.len() as f64);
    (rank_sum - nm * (nm + 1.0) / 2.0) / (nh * nm)
}

/// The threshold above which at most a fraction `fpr` of the human scores
/// lie: texts scoring strictly above it are called machine.
pub fn threshold_at_fpr(human: &[f64], fpr: f64) -> f64 {
    let mut sorted = human.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let allowed = (fpr * sorted.len() as f64).floor() as usize;
    sorted.get(allowed).copied().unwrap_or(f64::NEG_INFINITY)
}

/// The fraction of machine scores above the threshold set on the human
/// scores at `fpr`.
pub fn tpr_at_fpr(human: &[f64], machine: &[f64], fpr: f64) -> f64 {
    let t = threshold_at_fpr(human, fpr);
    machine.iter().filter(|&&s| s > t).count() as f64 / machine.len() as f64
}

/// A 95% percentile-bootstrap interval of `metric`, resampling the human
/// and machine scores separately (fixed seed, so reruns agree).
pub fn bootstrap_ci(
    human: &[f64],
    machine: &[f64],
    metric: &dyn Fn(&[f64], &[f64]) -> f64,
    iters: usize,
) -> (f64, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut values: Vec<f64> = (0..iters)
        .map(|_| {
            let h: Vec<f64> = (0..human.len())
                .map(|_| human[rng.random_range(0..human.len())])
                .collect();
            let m: Vec<f64> = (0..machine.len())
                .map(|_| machine[rng.random_range(0..machine.len())])
                .collect();
            metric(&h, &m)
        })
        .collect();
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| values[((q * (iters - 1) as f64).round() as usize).min(iters - 1)];
    (at(0.025), at(0.975))
}

/// Token-count buckets of a threshold file: [16, 64), [64, 128), ...
pub const BUCKET_EDGES: [usize; 5] = [16, 64, 128, 256, 512];

/// The target false-positive rates calibrated.
pub const TARGET_FPRS: [f64; 2] = [0.01, 0.001];

/// Thresholds for one statistic, per length bucket, at the target FPRs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub statistic: String,
    pub model: String,
    /// Texts with fewer scored tokens get no verdict.
    pub min_tokens: usize,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub min_tokens: usize,
    /// Exclusive; `None` for the last bucket.
    pub max_tokens: Option<usize>,
    pub human_texts: usize,
    /// (target FPR, threshold, whether there were too few human texts to
    /// resolve that FPR, in which case the threshold is the largest human
    /// score: no calibration text would be flagged).
    pub thresholds: Vec<(f64, f64, bool)>,
}

impl Thresholds {
    /// Calibrates on human texts: (token count, machine score) pairs.
    pub fn calibrate(statistic: &str, model: &str, human: &[(usize, f64)]) -> Thresholds {
        let mut buckets = Vec::new();
        for (i, &lo) in BUCKET_EDGES.iter().enumerate() {
            let hi = BUCKET_EDGES.get(i + 1).copied();
            let scores: Vec<f64> = human
                .iter()
                .filter(|(n, _)| *n >= lo && hi.is_none_or(|h| *n < h))
                .map(|&(_, s)| s)
                .collect();
            if scores.is_empty() {
                continue;
            }
            let thresholds = TARGET_FPRS
                .iter()
                .map(|&fpr| {
                    let few = (scores.len() as f64) * fpr < 1.0;
                    (fpr, threshold_at_fpr(&scores, fpr), few)
                })
                .collect();
            buckets.push(Bucket {
                min_tokens: lo,
                max_tokens: hi,
                human_texts: scores.len(),
                thresholds,
            });
        }
        Thresholds {
            statistic: statistic.to_string(),
            model: model.to_string(),
            min_tokens: BUCKET_EDGES[0],
            buckets,
        }
    }

    /// "machine", "human", or "abstain" (too short, or no calibrated
    /// bucket for this length).
    pub fn decide(&self, tokens: usize, score: f64, fpr: f64) -> &'static str {
        if tokens < self.min_tokens {
            return "abstain";
        }
        let bucket = self
            .buckets
            .iter()
            .find(|b| tokens >= b.min_tokens && b.max_tokens.is_none_or(|h| tokens < h));
        let threshold =
            bucket.and_then(|b| b.thresholds.iter().find(|t| (t.0 - fpr).abs() < 1e-12));
        match threshold {
            Some(&(_, t, _)) if score > t => "machine",
            Some(_) => "human",
            None => "abstain",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_pairs_and_ties() {
        assert_eq!(auroc(&[0.0, 1.0], &[2.0, 3.0]), 1.0);
        assert_eq!(auroc(&[2.0, 3.0], &[0.0, 1.0]), 0.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        // pairs: (0,0.5)=1, (0,2)=1, (1,0.5)=0, (1,2)=1 -> 3/4
        assert_eq!(auroc(&[0.0, 1.0], &[0.5, 2.0]), 0.75);
    }

    #[test]
    fn thresholds_hold_the_false_positive_rate() {
        let human: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let t = threshold_at_fpr(&human, 0.01);
        assert_eq!(human.iter().filter(|&&h| h > t).count(), 10);
        let machine: Vec<f64> = (0..100).map(|i| 985.0 + i as f64).collect();
        // The threshold is 989: machine scores 990..=1084 are above it.
        assert!((tpr_at_fpr(&human, &machine, 0.01) - 0.95).abs() < 1e-12);
        let (lo, hi) = bootstrap_ci(&human, &machine, &|h, m| auroc(h, m), 200);
        let point = auroc(&human, &machine);
        assert!(
            lo <= point && point <= hi && hi - lo < 0.1,
            "{lo} {point} {hi}"
        );
    }

    #[test]
    fn decisions_use_the_length_bucket_and_abstain_when_short() {
        let human: Vec<(usize, f64)> = (0..200).map(|i| (100, i as f64)).collect();
        let t = Thresholds::calibrate("fast_detectgpt", "default", &human);
        assert_eq!(t.buckets.len(), 1);
        assert!(
            t.buckets[0].thresholds[1].2,
            "200 texts cannot resolve 0.1%"
        );
        assert_eq!(t.decide(100, 1000.0, 0.01), "machine");
        assert_eq!(t.decide(100, 0.0, 0.01), "human");
        assert_eq!(t.decide(10, 1000.0, 0.01), "abstain");
        assert_eq!(t.decide(300, 1000.0, 0.01), "abstain");
    }
}
