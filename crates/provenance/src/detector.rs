//! Trained detectors: [`Detector`] is any of them, as its directory's
//! `detector.json` names its kind; the fine-tuned classifier is in
//! [`crate::classifier`].
//!
//! The feature detector is logistic regression on the statistics of one
//! forward pass (log-likelihood, log-rank, entropy, LRR, Fast-DetectGPT,
//! the four GLTR fractions) and the text's length, for when fine-tuning a
//! classifier is not wanted.
//!
//! Training is Newton's method on the L2-regularised log-loss over
//! standardised features: deterministic, a few milliseconds for thousands
//! of texts. Its quality is measured by stratified k-fold cross-validation
//! (out-of-fold scores), and its thresholds are calibrated on the
//! out-of-fold scores of the human texts, so the false-positive rate they
//! promise was measured on texts the model did not see.

use crate::classifier::{log_odds, Classifier, ClassifierCard, CLASSIFIER_KIND};
use crate::roc::{auroc, tpr_at_fpr, Thresholds};
use crate::stats::Statistics;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file a detector directory holds.
pub const DETECTOR_FILE: &str = "detector.json";
/// The `kind` of a feature detector.
pub const FEATURES_KIND: &str = "features";

/// The features, in order.
pub const FEATURES: [&str; 10] = [
    "log_likelihood",
    "log_rank",
    "entropy",
    "lrr",
    "fast_detectgpt",
    "gltr_top10",
    "gltr_top100",
    "gltr_top1000",
    "gltr_rest",
    "ln_tokens",
];

/// The feature vector of one text's statistics. LRR is unbounded when
/// every token is the argmax; it is clipped, as is anything non-finite.
pub fn features(s: &Statistics, tokens: usize) -> [f64; 10] {
    let total = f64::from(s.gltr.iter().sum::<u32>().max(1));
    let frac = |i: usize| f64::from(s.gltr[i]) / total;
    let clip = |x: f64| {
        if x.is_finite() {
            x.clamp(-1e3, 1e3)
        } else {
            1e3
        }
    };
    [
        clip(s.log_likelihood),
        clip(s.log_rank),
        clip(s.entropy),
        clip(s.lrr),
        clip(s.fast_detectgpt),
        frac(0),
        frac(1),
        frac(2),
        frac(3),
        (tokens.max(1) as f64).ln(),
    ]
}

/// A logistic regression over standardised features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub weights: Vec<f64>,
    pub bias: f64,
}

/// The L2 penalty on the weights (not the bias), per text.
const L2: f64 = 1e-3;

impl Logistic {
    /// Fits `P(machine | x)` to human (label 0) and machine (label 1)
    /// feature vectors.
    pub fn fit(human: &[Vec<f64>], machine: &[Vec<f64>]) -> Logistic {
        let d = human.first().or(machine.first()).map_or(0, Vec::len);
        let all: Vec<&Vec<f64>> = human.iter().chain(machine).collect();
        let n = all.len().max(1) as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| all.iter().map(|x| x[j]).sum::<f64>() / n)
            .collect();
        let std: Vec<f64> = (0..d)
            .map(|j| {
                let v = all.iter().map(|x| (x[j] - mean[j]).powi(2)).sum::<f64>() / n;
                if v > 1e-12 {
                    v.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        let mut m = Logistic {
            mean,
            std,
            weights: vec![0.0; d],
            bias: 0.0,
        };
        let rows: Vec<(Vec<f64>, f64)> = human
            .iter()
            .map(|x| (m.standardise(x), 0.0))
            .chain(machine.iter().map(|x| (m.standardise(x), 1.0)))
            .collect();
        for _ in 0..50 {
            if !m.newton_step(&rows) {
                break;
            }
        }
        m
    }

    fn standardise(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((v, m), s)| (v - m) / s)
            .collect()
    }

    fn logit_of(&self, z: &[f64]) -> f64 {
        self.bias + z.iter().zip(&self.weights).map(|(a, b)| a * b).sum::<f64>()
    }

    /// One Newton step on [bias, weights]; false once it has converged.
    fn newton_step(&mut self, rows: &[(Vec<f64>, f64)]) -> bool {
        let d = self.weights.len() + 1;
        let n = rows.len() as f64;
        let mut grad = vec![0.0; d];
        let mut hess = vec![vec![0.0; d]; d];
        for (z, y) in rows {
            let p = sigmoid(self.logit_of(z));
            let w = (p * (1.0 - p)).max(1e-12);
            let x: Vec<f64> = std::iter::once(1.0).chain(z.iter().copied()).collect();
            for i in 0..d {
                grad[i] += (p - y) * x[i];
                for j in 0..d {
                    hess[i][j] += w * x[i] * x[j];
                }
            }
        }
        for i in 1..d {
            grad[i] += L2 * n * self.weights[i - 1];
            hess[i][i] += L2 * n;
        }
        let Some(step) = solve(hess, grad) else {
            return false;
        };
        self.bias -= step[0];
        for (w, s) in self.weights.iter_mut().zip(&step[1..]) {
            *w -= s;
        }
        step.iter().map(|s| s.abs()).fold(0.0, f64::max) > 1e-9
    }

    /// The log-odds that the text is machine-written: larger is more
    /// machine-like (the orientation calibration and ROC use).
    pub fn score(&self, x: &[f64]) -> f64 {
        self.logit_of(&self.standardise(x))
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; `None`
/// when `a` is singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        if a[p][c].abs() < 1e-300 {
            return None;
        }
        a.swap(c, p);
        b.swap(c, p);
        let (top, rest) = a.split_at_mut(c + 1);
        let (pivot, bc) = (&top[c], b[c]);
        for (row, rhs) in rest.iter_mut().zip(&mut b[c + 1..]) {
            let f = row[c] / pivot[c];
            for (x, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                *x -= f * p;
            }
            *rhs -= f * bc;
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// Out-of-fold scores of stratified `k`-fold cross-validation (each text
/// scored by the model fitted without its fold), shuffled with `seed`.
pub fn cross_validate(
    human: &[Vec<f64>],
    machine: &[Vec<f64>],
    k: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let fold_of = |n: usize, rng: &mut ChaCha8Rng| {
        let mut idx: Vec<usize> = (0..n).map(|i| i % k).collect();
        idx.shuffle(rng);
        idx
    };
    let (fh, fm) = (
        fold_of(human.len(), &mut rng),
        fold_of(machine.len(), &mut rng),
    );
    let (mut sh, mut sm) = (vec![0.0; human.len()], vec![0.0; machine.len()]);
    for fold in 0..k {
        let pick = |xs: &[Vec<f64>], f: &[usize], inside: bool| -> Vec<Vec<f64>> {
            xs.iter()
                .zip(f)
                .filter(|(_, &g)| (g == fold) != inside)
                .map(|(x, _)| x.clone())
                .collect()
        };
        let m = Logistic::fit(&pick(human, &fh, true), &pick(machine, &fm, true));
        for (i, x) in human.iter().enumerate().filter(|(i, _)| fh[*i] == fold) {
            sh[i] = m.score(x);
        }
        for (i, x) in machine.iter().enumerate().filter(|(i, _)| fm[*i] == fold) {
            sm[i] = m.score(x);
        }
    }
    (sh, sm)
}

/// What cross-validation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub folds: usize,
    pub human_texts: usize,
    pub machine_texts: usize,
    pub auroc: f64,
    pub tpr_at_1pct_fpr: f64,
    pub tpr_at_01pct_fpr: f64,
}

/// A trained detector as its directory holds it (`detector.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDetector {
    pub kind: String,
    /// The tokenizer the statistics were computed with.
    pub tokenizer: String,
    /// The scoring model (`--model`) the statistics come from; scoring with
    /// another model would give other statistics.
    pub model: String,
    pub features: Vec<String>,
    pub logistic: Logistic,
    /// Thresholds on the score, calibrated on out-of-fold human scores.
    pub thresholds: Thresholds,
    pub validation: Validation,
}

/// Why a detector directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct DetectorError {
    pub path: String,
    pub message: String,
}

impl DetectorError {
    pub fn new(path: &Path, message: String) -> DetectorError {
        DetectorError {
            path: path.display().to_string(),
            message,
        }
    }
}

/// A trained detector's judgement of one text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Larger is more machine-like.
    pub score: f64,
    /// A classifier's class logits (human, machine); the score is their
    /// difference.
    pub logits: Option<[f32; 2]>,
}

/// Any trained detector, of the kind its `detector.json` names.
pub enum Detector {
    Features(Box<FeatureDetector>),
    Classifier(Box<Classifier>),
}

impl Detector {
    /// Reads `dir/detector.json` and what its kind needs beside it.
    pub fn load(dir: &Path) -> Result<Detector, DetectorError> {
        let path = dir.join(DETECTOR_FILE);
        let err = |message: String| DetectorError::new(&path, message);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            err(format!(
                "{e} (a detector directory holds {DETECTOR_FILE}, from `gpt2 detect train`)"
            ))
        })?;
        let card: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
        match card["kind"].as_str() {
            Some(FEATURES_KIND) => Ok(Detector::Features(Box::new(FeatureDetector::from_card(
                card, &path,
            )?))),
            Some(CLASSIFIER_KIND) => {
                let card: ClassifierCard = serde_json::from_value(card)
                    .map_err(|e| err(format!("not a classifier's card: {e}")))?;
                Ok(Detector::Classifier(Box::new(Classifier::load(dir, card)?)))
            }
            Some(other) => Err(err(format!(
                "a detector of kind {other:?}, which this gpt2 cannot run \
                 (it runs {FEATURES_KIND:?} and {CLASSIFIER_KIND:?})"
            ))),
            None => Err(err("not a detector: no \"kind\"".into())),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Detector::Features(_) => FEATURES_KIND,
            Detector::Classifier(_) => CLASSIFIER_KIND,
        }
    }

    /// The thresholds its verdicts use, calibrated when it was trained.
    pub fn thresholds(&self) -> &Thresholds {
        match self {
            Detector::Features(d) => &d.thresholds,
            Detector::Classifier(c) => &c.card.thresholds,
        }
    }

    /// The AUROC measured when it was trained (out-of-fold for features,
    /// held-out texts for a classifier).
    pub fn validation_auroc(&self) -> f64 {
        match self {
            Detector::Features(d) => d.validation.auroc,
            Detector::Classifier(c) => c.card.validation.auroc,
        }
    }

    /// The scoring model whose statistics a feature detector reads; a
    /// classifier reads the text through its own weights and needs none.
    pub fn statistics_model(&self) -> Option<&str> {
        match self {
            Detector::Features(d) => Some(&d.model),
            Detector::Classifier(_) => None,
        }
    }

    /// How many of a text's `tokens` the detector reads: the length its
    /// thresholds' buckets are chosen by.
    pub fn read_tokens(&self, tokens: usize) -> usize {
        match self {
            Detector::Features(_) => tokens,
            Detector::Classifier(c) => tokens.min(c.card.max_tokens),
        }
    }

    /// The machine score of each text, given its tokens and the scoring
    /// model's statistics of it.
    pub fn scores(&self, texts: &[(&[u32], &Statistics)]) -> gpt2_model::Result<Vec<Scored>> {
        match self {
            Detector::Features(d) => Ok(texts
                .iter()
                .map(|(t, s)| Scored {
                    score: d.score(s, t.len()),
                    logits: None,
                })
                .collect()),
            Detector::Classifier(c) => {
                let ids: Vec<&[u32]> = texts.iter().map(|(t, _)| *t).collect();
                Ok(c.logits(&ids)?
                    .into_iter()
                    .map(|l| Scored {
                        score: log_odds(l),
                        logits: Some(l),
                    })
                    .collect())
            }
        }
    }
}

impl FeatureDetector {
    /// Fits the detector on labelled feature vectors of texts scored with
    /// `model`; `tokens` are each text's token counts (for calibration per
    /// length bucket).
    pub fn train(
        model: &str,
        human: &[(usize, Vec<f64>)],
        machine: &[(usize, Vec<f64>)],
        folds: usize,
        seed: u64,
    ) -> FeatureDetector {
        let hx: Vec<Vec<f64>> = human.iter().map(|(_, x)| x.clone()).collect();
        let mx: Vec<Vec<f64>> = machine.iter().map(|(_, x)| x.clone()).collect();
        let (oof_h, oof_m) = cross_validate(&hx, &mx, folds, seed);
        let calibration: Vec<(usize, f64)> = human
            .iter()
            .map(|(n, _)| *n)
            .zip(oof_h.iter().copied())
            .collect();
        FeatureDetector {
            kind: FEATURES_KIND.into(),
            tokenizer: "gpt2".into(),
            model: model.into(),
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
            logistic: Logistic::fit(&hx, &mx),
            thresholds: Thresholds::calibrate("detector", model, &calibration),
            validation: Validation {
                folds,
                human_texts: hx.len(),
                machine_texts: mx.len(),
                auroc: auroc(&oof_h, &oof_m),
                tpr_at_1pct_fpr: tpr_at_fpr(&oof_h, &oof_m, 0.01),
                tpr_at_01pct_fpr: tpr_at_fpr(&oof_h, &oof_m, 0.001),
            },
        }
    }

    pub fn score(&self, s: &Statistics, tokens: usize) -> f64 {
        self.logistic.score(&features(s, tokens))
    }

    /// Reads a feature detector's directory, refusing another kind of
    /// detector, another tokenizer or another feature list.
    pub fn load(dir: &Path) -> Result<FeatureDetector, DetectorError> {
        match Detector::load(dir)? {
            Detector::Features(d) => Ok(*d),
            other => Err(DetectorError::new(
                dir,
                format!("a {} detector, not a feature detector", other.kind()),
            )),
        }
    }

    fn from_card(card: serde_json::Value, path: &Path) -> Result<FeatureDetector, DetectorError> {
        let err = |message: String| DetectorError::new(path, message);
        let d: FeatureDetector = serde_json::from_value(card)
            .map_err(|e| err(format!("not a feature detector: {e}")))?;
        if d.tokenizer != "gpt2" {
            return Err(err(format!(
                "made with the {:?} tokenizer, not GPT-2's",
                d.tokenizer
            )));
        }
        let dims = d.logistic.weights.len();
        if d.features != FEATURES
            || dims != FEATURES.len()
            || d.logistic.mean.len() != dims
            || d.logistic.std.len() != dims
        {
            return Err(err(format!(
                "its features are {:?}; this gpt2 computes {:?}",
                d.features, FEATURES
            )));
        }
        Ok(d)
    }

    /// Writes `dir/detector.json` (the directory is created).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        gpt2_model::atomic::write_atomic(&dir.join(DETECTOR_FILE), json.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Gaussian classes 2 standard deviations apart in one of three
    /// dimensions.
    fn classes(n: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut normal = || {
            let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let mut draw =
            |shift: f64| -> Vec<f64> { vec![normal() + shift, normal() * 5.0 + 3.0, normal()] };
        let h = (0..n).map(|_| draw(0.0)).collect();
        let m = (0..n).map(|_| draw(2.0)).collect();
        (h, m)
    }

    #[test]
    fn logistic_regression_finds_the_separating_direction() {
        let (h, m) = classes(2000, 1);
        let model = Logistic::fit(&h, &m);
        // The informative dimension dominates; the others are noise.
        let w = &model.weights;
        assert!(w[0] > 1.5 && w[1].abs() < 0.2 && w[2].abs() < 0.2, "{w:?}");
        let hs: Vec<f64> = h.iter().map(|x| model.score(x)).collect();
        let ms: Vec<f64> = m.iter().map(|x| model.score(x)).collect();
        // Two unit Gaussians 2 apart: AUROC = Phi(2 / sqrt 2) = 0.921.
        let a = auroc(&hs, &ms);
        assert!((a - 0.921).abs() < 0.02, "{a}");
    }

    #[test]
    fn cross_validation_is_out_of_fold_and_repeatable() {
        let (h, m) = classes(300, 2);
        let (a, b) = cross_validate(&h, &m, 5, 7);
        assert_eq!(cross_validate(&h, &m, 5, 7), (a.clone(), b.clone()));
        let oof = auroc(&a, &b);
        assert!((oof - 0.921).abs() < 0.05, "{oof}");
        // Pure noise: out-of-fold AUROC stays near chance, where fitting and
        // scoring the same texts would not.
        let (h2, m2) = classes(300, 3);
        let m2: Vec<Vec<f64>> = m2.iter().map(|x| vec![x[0] - 2.0, x[1], x[2]]).collect();
        let (a2, b2) = cross_validate(&h2, &m2, 5, 7);
        assert!((auroc(&a2, &b2) - 0.5).abs() < 0.08);
    }

    #[test]
    fn a_saved_detector_loads_and_a_foreign_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (h, m) = classes(100, 4);
        let pad = |x: &Vec<f64>| -> (usize, Vec<f64>) {
            let mut v = x.clone();
            v.resize(FEATURES.len(), 0.5);
            (200, v)
        };
        let h: Vec<_> = h.iter().map(pad).collect();
        let m: Vec<_> = m.iter().map(pad).collect();
        let d = FeatureDetector::train("default", &h, &m, 5, 1);
        d.save(dir.path()).unwrap();
        let back = FeatureDetector::load(dir.path()).unwrap();
        assert_eq!(
            (&back.kind, &back.model, &back.features),
            (&d.kind, &d.model, &d.features)
        );
        for (_, x) in h.iter().chain(&m).take(20) {
            assert!((back.logistic.score(x) - d.logistic.score(x)).abs() < 1e-9);
        }
        let path = dir.path().join(DETECTOR_FILE);
        let other = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"features\",", "\"forest\",");
        std::fs::write(&path, other).unwrap();
        let e = FeatureDetector::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("forest") && e.contains("cannot run"), "{e}");
        let e = FeatureDetector::load(&dir.path().join("nowhere"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("detector.json"), "{e}");
    }
}
