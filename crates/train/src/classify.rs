//! Fine-tuning GPT-2 as a human / machine sequence classifier, in Hugging
//! Face's `GPT2ForSequenceClassification` layout: the transformer's final
//! hidden state at each text's last non-padding token, times `score.weight`
//! (`[2, C]`, no bias), under cross-entropy. The body's forward and
//! backward passes are [`TrainModel`]'s; only the head is new here.
//!
//! A seeded split holds out a share of each class; validation AUROC on it
//! is measured every `eval_every` steps, the best step's weights are kept,
//! and training stops after `patience` measurements without improvement.
//! The kept model's held-out human scores calibrate its thresholds, so the
//! false-positive rates it promises were measured on texts it was not
//! trained on (though they chose the step it stopped at).

use crate::adamw::AdamW;
use crate::checkpoint::{model_entries, tensor_entry, write_files, Precision};
use crate::data::{write_atomic, DataError};
use crate::model::{weights_from_params, TrainModel};
use crate::params::{decayed, sizes};
use gpt2_model::{Config, Model, END_OF_TEXT};
use gpt2_provenance::classifier::{
    class_logits, last_position, Classifier, ClassifierCard, HeldOut, CLASSIFIER_KIND, LABELS,
    SCORE_TENSOR,
};
use gpt2_provenance::detector::DETECTOR_FILE;
use gpt2_provenance::roc::{auroc, tpr_at_fpr, Thresholds};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// The token that pads a batch's shorter texts (GPT-2 has no pad token;
/// `transformers` users set it to end-of-text).
pub const PAD: u32 = END_OF_TEXT;

#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyOptions {
    pub batch: usize,
    /// The most passes over the training texts.
    pub epochs: usize,
    pub lr: f32,
    pub weight_decay: f32,
    /// Steps of linear warm-up; then linear decay to 0 at the last step.
    pub warmup: u64,
    /// Steps between validations (and one at the end of every epoch).
    pub eval_every: u64,
    /// Validations without a better AUROC before training stops.
    pub patience: usize,
    /// The share of each class held out for validation.
    pub val_share: f64,
    /// Tokens read from the start of each text.
    pub max_tokens: usize,
    pub seed: u64,
}

impl ClassifyOptions {
    pub fn validate(&self, n_ctx: usize) -> Result<(), String> {
        if self.batch == 0 || self.epochs == 0 || self.patience == 0 {
            return Err("--batch, --epochs and --patience must be positive numbers".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(0.05..=0.5).contains(&self.val_share) {
            return Err(format!(
                "--val-share must be between 0.05 and 0.5, got {}",
                self.val_share
            ));
        }
        if self.max_tokens == 0 || self.max_tokens > n_ctx {
            return Err(format!(
                "--max-tokens must be between 1 and the model's context {n_ctx}, got {}",
                self.max_tokens
            ));
        }
        Ok(())
    }
}

/// One line of the run's record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    pub step: u64,
    pub epoch: usize,
    /// Mean training loss since the previous measurement.
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_auroc: f64,
    pub elapsed_s: f64,
}

/// What the run reports as it goes.
pub enum Progress<'a> {
    Step {
        step: u64,
        total: u64,
        loss: f32,
        tokens_per_s: f64,
    },
    Validation {
        m: &'a Measurement,
        best: bool,
    },
}

/// A finished run: the kept classifier and how it got there.
pub struct Trained {
    pub classifier: Classifier,
    pub config: Config,
    /// The kept step's transformer parameters (flat, checkpoint order).
    pub params: Vec<f32>,
    /// The kept step's head, `[2, C]`.
    pub head: Vec<f32>,
    pub history: Vec<Measurement>,
}

/// Labelled texts as token ids: `(tokens, is_machine)`.
type Example = (Vec<u32>, bool);

/// Splits each class with `seed`, holding out `share` of it (at least one).
fn split(
    human: Vec<Vec<u32>>,
    machine: Vec<Vec<u32>>,
    share: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (texts, label) in [(human, false), (machine, true)] {
        let mut texts: Vec<Example> = texts.into_iter().map(|t| (t, label)).collect();
        texts.shuffle(&mut rng);
        let held = ((texts.len() as f64 * share).round() as usize).max(1);
        val.extend(texts.drain(..held));
        train.extend(texts);
    }
    (train, val)
}

/// The loss, the class logits and the head's gradient of one batch of
/// final hidden states, and the gradient of the loss with respect to them
/// (in `dhidden`, rows of unused slots left 0). `rows[b]` is the row
/// classified for example `b`.
fn head_forward_backward(
    hidden: &[f32],
    head: &[f32],
    rows: &[(usize, bool)],
    dhead: &mut [f32],
    dhidden: &mut [f32],
    c: usize,
) -> (f64, Vec<[f32; 2]>) {
    dhidden.fill(0.0);
    let m = rows.len() as f32;
    let mut loss = 0.0;
    let mut logits = Vec::with_capacity(rows.len());
    for &(row, label) in rows {
        let h = &hidden[row * c..(row + 1) * c];
        let l = class_logits(head, h);
        let top = l[0].max(l[1]);
        let (e0, e1) = ((l[0] - top).exp(), (l[1] - top).exp());
        let p = [e0 / (e0 + e1), e1 / (e0 + e1)];
        let y = label as usize;
        loss -= (p[y].max(f32::MIN_POSITIVE) as f64).ln();
        let dh = &mut dhidden[row * c..(row + 1) * c];
        for k in 0..2 {
            let dl = (p[k] - (k == y) as u8 as f32) / m;
            let w = &head[k * c..(k + 1) * c];
            let dw = &mut dhead[k * c..(k + 1) * c];
            for i in 0..c {
                dw[i] += dl * h[i];
                dh[i] += dl * w[i];
            }
        }
        logits.push(l);
    }
    (loss / rows.len() as f64, logits)
}

/// Fills `tokens` (`[batch, seq]`, padded) with `examples` and returns the
/// classified row and label of each.
fn fill_batch(tokens: &mut [u32], examples: &[&Example], seq: usize) -> Vec<(usize, bool)> {
    tokens.fill(PAD);
    let mut rows = Vec::with_capacity(examples.len());
    for (b, (t, label)) in examples.iter().enumerate() {
        let t = &t[..t.len().min(seq)];
        tokens[b * seq..b * seq + t.len()].copy_from_slice(t);
        rows.push((b * seq + last_position(t, PAD), *label));
    }
    rows
}

/// `sqrt(sum of squares)` of both gradient buffers, scaled down together
/// to `max_norm` when above it (as `clip_grad_norm_` over all parameters).
fn clip_together(a: &mut [f32], b: &mut [f32], max_norm: f32) {
    let sq = |x: &[f32]| x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>();
    let norm = (sq(a) + sq(b)).sqrt() as f32;
    if norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        a.iter_mut().chain(b.iter_mut()).for_each(|v| *v *= s);
    }
}

struct Run<'a> {
    model: TrainModel,
    head: Vec<f32>,
    dhead: Vec<f32>,
    dhidden: Vec<f32>,
    batch_tokens: Vec<u32>,
    opts: &'a ClassifyOptions,
}

impl Run<'_> {
    fn c(&self) -> usize {
        self.model.config.n_embd
    }

    fn seq(&self) -> usize {
        self.batch_tokens.len() / self.opts.batch
    }

    /// Loss and class logits of `examples` (at most one batch) under the
    /// current weights.
    fn forward(&mut self, examples: &[&Example]) -> (f64, Vec<[f32; 2]>, Vec<(usize, bool)>) {
        let seq = self.seq();
        let rows = fill_batch(&mut self.batch_tokens, examples, seq);
        let c = self.c();
        let hidden = self.model.forward_hidden(&self.batch_tokens);
        self.dhead.fill(0.0);
        let (loss, logits) = head_forward_backward(
            hidden,
            &self.head,
            &rows,
            &mut self.dhead,
            &mut self.dhidden,
            c,
        );
        (loss, logits, rows)
    }

    /// The held-out loss and AUROC.
    fn validate(&mut self, val: &[Example]) -> (f64, f64) {
        let (mut loss, mut human, mut machine) = (0.0, Vec::new(), Vec::new());
        for chunk in val.chunks(self.opts.batch) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let (l, logits, _) = self.forward(&refs);
            loss += l * chunk.len() as f64;
            for ((_, is_machine), l) in chunk.iter().zip(logits) {
                let s = (l[1] - l[0]) as f64;
                if *is_machine {
                    machine.push(s)
                } else {
                    human.push(s)
                }
            }
        }
        (loss / val.len() as f64, auroc(&human, &machine))
    }

    fn step(
        &mut self,
        examples: &[&Example],
        body_opt: &mut AdamW,
        head_opt: &mut AdamW,
        lr: f32,
    ) -> f64 {
        let (loss, _, _) = self.forward(examples);
        self.model.zero_grads();
        self.model.backward_hidden(&self.dhidden);
        clip_together(&mut self.model.grads, &mut self.dhead, 1.0);
        body_opt.update(&mut self.model.params, &self.model.grads, lr);
        head_opt.update(&mut self.head, &self.dhead, lr);
        loss
    }
}

/// Linear warm-up to `lr`, then linear decay to 0 at step `total`.
fn lr_at(opts: &ClassifyOptions, step: u64, total: u64) -> f32 {
    if step < opts.warmup {
        return opts.lr * (step + 1) as f32 / opts.warmup as f32;
    }
    let span = (total - opts.warmup).max(1) as f32;
    opts.lr * (1.0 - (step - opts.warmup) as f32 / span).max(0.0)
}

/// Fine-tunes `params` (a checkpoint of `config`, named `base_model`) on
/// token ids of human and machine texts.
pub fn train_classifier(
    config: Config,
    params: Vec<f32>,
    base_model: &str,
    human: Vec<Vec<u32>>,
    machine: Vec<Vec<u32>>,
    opts: &ClassifyOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Trained, String> {
    opts.validate(config.n_ctx)?;
    if human.iter().chain(&machine).any(|t| t.is_empty()) {
        return Err("a text has no tokens".into());
    }
    let (train, val) = split(human, machine, opts.val_share, opts.seed);
    let seq = train
        .iter()
        .chain(&val)
        .map(|(t, _)| t.len())
        .max()
        .unwrap_or(1)
        .min(opts.max_tokens);
    let c = config.n_embd;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5eed);
    let mut head = vec![0f32; 2 * c];
    normals(&mut head, 0.02, &mut rng);
    let mut run = Run {
        model: TrainModel::new(config, params, opts.batch, seq),
        head,
        dhead: vec![0.0; 2 * c],
        dhidden: vec![0.0; opts.batch * seq * c],
        batch_tokens: vec![PAD; opts.batch * seq],
        opts,
    };
    let mut body_opt = AdamW::new(&sizes(&config), &decayed(&config));
    let mut head_opt = AdamW::new(&[2 * c], &[true]);
    body_opt.weight_decay = opts.weight_decay;
    head_opt.weight_decay = opts.weight_decay;
    let per_epoch = train.len().div_ceil(opts.batch) as u64;
    let total = per_epoch * opts.epochs as u64;
    let start = Instant::now();
    let (mut step, mut since_best, mut losses) = (0u64, 0usize, Vec::new());
    // (AUROC, step, transformer parameters, head) of the best validation.
    let mut best: Option<(f64, u64, Vec<f32>, Vec<f32>)> = None;
    let mut history = Vec::new();
    'epochs: for epoch in 0..opts.epochs {
        let mut order: Vec<&Example> = train.iter().collect();
        order.shuffle(&mut rng);
        for (i, chunk) in order.chunks(opts.batch).enumerate() {
            let t0 = Instant::now();
            let loss = run.step(
                chunk,
                &mut body_opt,
                &mut head_opt,
                lr_at(opts, step, total),
            );
            losses.push(loss);
            step += 1;
            progress(Progress::Step {
                step,
                total,
                loss: loss as f32,
                tokens_per_s: (opts.batch * seq) as f64 / t0.elapsed().as_secs_f64(),
            });
            let epoch_end = i + 1 == per_epoch as usize;
            if !(epoch_end || (opts.eval_every > 0 && step.is_multiple_of(opts.eval_every))) {
                continue;
            }
            let (val_loss, val_auroc) = run.validate(&val);
            let m = Measurement {
                step,
                epoch,
                train_loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
                val_loss,
                val_auroc,
                elapsed_s: start.elapsed().as_secs_f64(),
            };
            losses.clear();
            let better = best.as_ref().is_none_or(|(a, ..)| val_auroc > *a);
            progress(Progress::Validation {
                m: &m,
                best: better,
            });
            history.push(m);
            if better {
                best = Some((val_auroc, step, run.model.params.clone(), run.head.clone()));
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= opts.patience {
                    break 'epochs;
                }
            }
        }
    }
    // invariant: every epoch ends with a validation, and there is at least
    // one epoch, so a best step exists.
    let (_, best_step, params, head) = best.unwrap_or_else(|| unreachable!());
    let model = Model::from_parts(config, weights_from_params(&config, &params));
    let training = json!({
        "batch": opts.batch, "epochs": opts.epochs, "lr": opts.lr, "weight_decay": opts.weight_decay,
        "warmup": opts.warmup, "eval_every": opts.eval_every, "patience": opts.patience,
        "val_share": opts.val_share, "seed": opts.seed, "seq": seq,
        "train_texts": {"human": train.iter().filter(|e| !e.1).count(), "machine": train.iter().filter(|e| e.1).count()},
        "steps_run": step, "steps_planned": total, "kept_step": best_step,
        "stopped_early": step < total, "train_seconds": start.elapsed().as_secs_f64(),
    });
    let card = ClassifierCard {
        kind: CLASSIFIER_KIND.into(),
        tokenizer: "gpt2".into(),
        base_model: base_model.into(),
        max_tokens: opts.max_tokens,
        pad_token_id: PAD,
        thresholds: Thresholds::calibrate("detector", base_model, &[]),
        validation: HeldOut::default(),
        training,
    };
    // The held-out texts are scored again through the inference path,
    // which is what every user of the detector runs.
    let mut classifier = Classifier::from_parts(card, model, head.clone());
    let ids: Vec<&[u32]> = val.iter().map(|(t, _)| t.as_slice()).collect();
    let scores = classifier.scores(&ids).map_err(|e| e.to_string())?;
    let (mut hs, mut ms, mut calib, mut loss) = (Vec::new(), Vec::new(), Vec::new(), 0.0);
    for ((t, is_machine), &s) in val.iter().zip(&scores) {
        // The cross-entropy of the true class is log(1 + e^-margin).
        let margin = if *is_machine { s } else { -s };
        loss += (1.0 + (-margin).exp()).ln();
        if *is_machine {
            ms.push(s);
        } else {
            hs.push(s);
            calib.push((classifier.window(t).len(), s));
        }
    }
    classifier.card.thresholds = Thresholds::calibrate("detector", base_model, &calib);
    classifier.card.validation = HeldOut {
        human_texts: hs.len(),
        machine_texts: ms.len(),
        auroc: auroc(&hs, &ms),
        tpr_at_1pct_fpr: tpr_at_fpr(&hs, &ms, 0.01),
        tpr_at_01pct_fpr: tpr_at_fpr(&hs, &ms, 0.001),
        loss: loss / val.len() as f64,
    };
    Ok(Trained {
        classifier,
        config,
        params,
        head,
        history,
    })
}

/// Normals N(0, std) from `rng` (the head's initialisation, as
/// `transformers` initialises `score`).
fn normals(out: &mut [f32], std: f64, rng: &mut ChaCha8Rng) {
    use rand::Rng;
    for x in out.iter_mut() {
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        *x = ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * std) as f32;
    }
}

/// The `config.json` that `transformers` loads as a
/// `GPT2ForSequenceClassification` with labels human and machine.
pub fn classifier_config_json(config: &Config) -> serde_json::Value {
    let mut j = config.to_hf_json();
    j["architectures"] = json!(["GPT2ForSequenceClassification"]);
    j["id2label"] = json!({"0": LABELS[0], "1": LABELS[1]});
    j["label2id"] = json!({LABELS[0]: 0, LABELS[1]: 1});
    j["pad_token_id"] = json!(PAD);
    j
}

/// Writes the detector directory: the checkpoint (f32), `detector.json`
/// and `metrics.json` (the validation history).
pub fn write_classifier(dir: &Path, t: &Trained) -> Result<(), DataError> {
    let io = |e: std::io::Error| DataError::Io {
        path: dir.display().to_string(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let c = t.config.n_embd;
    let mut entries = model_entries(&t.config, &t.params, Precision::F32, "transformer.");
    entries.push(tensor_entry(
        SCORE_TENSOR.into(),
        vec![2, c],
        &t.head,
        Precision::F32,
    ));
    write_files(dir, &classifier_config_json(&t.config), &entries)?;
    let card = &t.classifier.card;
    let metrics =
        json!({"validation": card.validation, "training": card.training, "history": t.history});
    let text = |v: &serde_json::Value| serde_json::to_string_pretty(v).map_err(|e| io(e.into()));
    write_atomic(&dir.join("metrics.json"), text(&metrics)?.as_bytes())?;
    let card = serde_json::to_value(card).map_err(|e| io(e.into()))?;
    write_atomic(&dir.join(DETECTOR_FILE), text(&card)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head's gradients against central finite differences of its loss.
    #[test]
    fn the_head_gradients_match_finite_differences() {
        let (c, rows) = (5, vec![(1, true), (2, false), (0, true)]);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut hidden = vec![0f32; 3 * c];
        let mut head = vec![0f32; 2 * c];
        normals(&mut hidden, 1.0, &mut rng);
        normals(&mut head, 1.0, &mut rng);
        let (mut dhead, mut dhidden) = (vec![0f32; 2 * c], vec![0f32; 3 * c]);
        head_forward_backward(&hidden, &head, &rows, &mut dhead, &mut dhidden, c);
        let loss = |hidden: &[f32], head: &[f32]| {
            let (mut a, mut b) = (vec![0f32; 2 * c], vec![0f32; 3 * c]);
            head_forward_backward(hidden, head, &rows, &mut a, &mut b, c).0
        };
        let eps = 1e-2;
        // Central differences of the loss in each input, against the
        // analytic gradient.
        let check = |name: &str, x: &[f32], grad: &[f32], f: &dyn Fn(&[f32]) -> f64| {
            for i in 0..x.len() {
                let (mut up, mut down) = (x.to_vec(), x.to_vec());
                up[i] += eps;
                down[i] -= eps;
                let numeric = (f(&up) - f(&down)) / (2.0 * eps as f64);
                assert!(
                    (numeric - grad[i] as f64).abs() < 1e-3,
                    "{name} {i}: {numeric} vs {}",
                    grad[i]
                );
            }
        };
        check("hidden", &hidden, &dhidden, &|h| loss(h, &head));
        check("head", &head, &dhead, &|w| loss(&hidden, w));
    }

    #[test]
    fn each_class_is_split_with_at_least_one_text_held_out() {
        let texts = |n: usize, base: u32| (0..n).map(|i| vec![base + i as u32]).collect::<Vec<_>>();
        let (train, val) = split(texts(10, 0), texts(3, 100), 0.2, 1);
        assert_eq!((train.len(), val.len()), (10, 3));
        assert_eq!(val.iter().filter(|e| e.1).count(), 1);
        assert_eq!(split(texts(10, 0), texts(3, 100), 0.2, 1).1, val);
    }
}
