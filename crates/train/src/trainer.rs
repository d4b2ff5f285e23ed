//! The training loop: seeded batches, gradient accumulation, clipping,
//! AdamW with linear warm-up then cosine decay, periodic validation loss,
//! samples and atomic checkpoints, and a CSV log. Reporting goes through
//! [`Observer`], so the binary decides how progress is shown.

use crate::adamw::{clip_grad_norm, AdamW};
use crate::checkpoint::{self, Precision};
use crate::data::{batch_at, DataError};
use crate::model::{weights_from_params, TrainModel};
use crate::params::{decayed, sizes};
use gpt2_model::Model;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub batch: usize,
    pub seq: usize,
    pub grad_accum: usize,
    pub steps: u64,
    pub lr: f32,
    /// The learning rate at the end of the cosine, as a fraction of `lr`.
    pub min_lr_ratio: f32,
    pub warmup: u64,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    pub seed: u64,
}

impl TrainOptions {
    /// Rejects settings that cannot train, naming the option.
    pub fn validate(&self, n_ctx: usize) -> Result<(), String> {
        let positive = [
            ("--batch", self.batch),
            ("--seq", self.seq),
            ("--grad-accum", self.grad_accum),
            ("--eval-batches", self.eval_batches),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be a positive number"));
        }
        if self.steps == 0 {
            return Err("--steps must be a positive number".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(format!(
                "--min-lr-ratio must be in [0, 1], got {}",
                self.min_lr_ratio
            ));
        }
        if self.seq > n_ctx {
            return Err(format!(
                "--seq {} is longer than the model's context {n_ctx}",
                self.seq
            ));
        }
        Ok(())
    }

    /// Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio`.
    pub fn lr_at(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.lr * (step + 1) as f32 / self.warmup as f32;
        }
        let span = (self.steps - self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let min = self.lr as f64 * self.min_lr_ratio as f64;
        (min + 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()) * (self.lr as f64 - min))
            as f32
    }

    fn state(&self, step: u64) -> serde_json::Value {
        json!({
            "step": step, "batch": self.batch, "seq": self.seq, "grad_accum": self.grad_accum, "steps": self.steps,
            "lr": self.lr, "min_lr_ratio": self.min_lr_ratio, "warmup": self.warmup, "seed": self.seed,
        })
    }
}

/// One optimizer step's numbers.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: u64,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

pub trait Observer {
    fn step(&mut self, _r: &StepReport) {}
    fn validation(&mut self, _step: u64, _loss: f32) {}
    fn sample(&mut self, _step: u64, _text: &str) {}
    fn checkpoint(&mut self, _step: u64, _dir: &Path) {}
    fn warning(&mut self, _message: &str) {}
}

pub struct Trainer<'a> {
    pub model: TrainModel,
    pub opt: AdamW,
    pub options: TrainOptions,
    pub train: &'a [u16],
    pub val: &'a [u16],
    pub out: PathBuf,
    /// The next step to run (0, or where a resumed run left off).
    pub step: u64,
}

/// Whether `step` is a multiple of a period (0 = never).
fn every(step: u64, period: u64) -> bool {
    period > 0 && step.is_multiple_of(period)
}

/// Losses and learning rates of every step, one row each.
const CSV_HEADER: &str = "step,loss,val_loss,lr,grad_norm,tokens_per_s,elapsed_s\n";

impl<'a> Trainer<'a> {
    pub fn new(
        model: TrainModel,
        options: TrainOptions,
        train: &'a [u16],
        val: &'a [u16],
        out: &Path,
    ) -> Trainer<'a> {
        let opt = AdamW::new(&sizes(&model.config), &decayed(&model.config));
        Trainer {
            model,
            opt,
            options,
            train,
            val,
            out: out.to_path_buf(),
            step: 0,
        }
    }

    /// Continues from the newest checkpoint under `out`: parameters,
    /// optimizer state and step. The options must be those it was saved with
    /// (the step count may grow).
    pub fn resume(&mut self) -> Result<(), String> {
        let dir = checkpoint::latest(&self.out).map_err(|e| e.to_string())?;
        let state: serde_json::Value = std::fs::read_to_string(dir.join("state.json"))
            .map_err(|e| format!("{}: {e}", dir.join("state.json").display()))
            .and_then(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| format!("{}: {e}", dir.join("state.json").display()))
            })?;
        let mut saved = state.clone();
        let mut now = self.options.state(0);
        saved["step"] = json!(0);
        (saved["steps"], now["steps"]) = (json!(0), json!(0));
        if saved != now {
            return Err(format!(
                "{}: saved with other settings ({}), not {}",
                dir.display(),
                state,
                self.options.state(0)
            ));
        }
        let loaded = Model::load_dir(&dir).map_err(|e| e.to_string())?;
        if *loaded.config() != self.model.config {
            return Err(format!(
                "{}: the checkpoint's shape differs from the requested model",
                dir.display()
            ));
        }
        self.model.params = crate::model::params_from_weights(loaded.weights());
        checkpoint::read_optimizer(&dir.join("optimizer.bin"), &mut self.opt)
            .map_err(|e| e.to_string())?;
        self.step = state["step"].as_u64().ok_or("state.json has no step")?;
        Ok(())
    }

    fn train_tokens_per_step(&self) -> usize {
        self.options.batch * self.options.seq * self.options.grad_accum
    }

    /// Runs until `options.steps`, or until `stop_after` steps (saving a
    /// checkpoint there, so a run can be done in pieces).
    pub fn run(
        &mut self,
        observer: &mut dyn Observer,
        stop_after: Option<u64>,
    ) -> Result<(), DataError> {
        std::fs::create_dir_all(&self.out).map_err(|e| DataError::Io {
            path: self.out.display().to_string(),
            source: e,
        })?;
        let mut log = self.open_log()?;
        let o = self.options.clone();
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        let start = Instant::now();
        let first = self.step;
        let end = stop_after.map_or(o.steps, |s| s.min(o.steps));
        while self.step < end {
            let step = self.step;
            let lr = o.lr_at(step);
            let (loss, grad_norm) = self.optimizer_step(step, lr, &mut inputs, &mut targets);
            self.step += 1;
            let elapsed = start.elapsed().as_secs_f64();
            let report = StepReport {
                step,
                loss,
                lr,
                grad_norm,
                tokens_per_s: ((self.step - first) as usize * self.train_tokens_per_step()) as f64
                    / elapsed,
                elapsed_s: elapsed,
            };
            observer.step(&report);
            let last = self.step == end;
            let val_loss = if every(self.step, o.eval_every) || last {
                let v = self.validation_loss();
                observer.validation(step, v);
                Some(v)
            } else {
                None
            };
            let v = val_loss.map(|v| v.to_string()).unwrap_or_default();
            writeln!(
                log,
                "{step},{loss},{v},{lr},{grad_norm},{:.1},{:.2}",
                report.tokens_per_s, elapsed
            )
            .and_then(|_| log.flush())
            .map_err(|e| DataError::Io {
                path: self.out.join("log.csv").display().to_string(),
                source: e,
            })?;
            if every(self.step, o.sample_every) || last {
                observer.sample(step, &self.sample());
            }
            if every(self.step, o.checkpoint_every) || last {
                let dir = checkpoint::save(
                    &self.out,
                    self.step,
                    &self.model.config,
                    &self.model.params,
                    &self.opt,
                    &o.state(self.step),
                    Precision::F32,
                )?;
                observer.checkpoint(self.step, &dir);
            }
        }
        Ok(())
    }

    /// One step of the schedule: `grad_accum` micro-batches, averaged
    /// gradients, clipping, AdamW. Returns (mean loss, gradient norm before
    /// clipping).
    fn optimizer_step(
        &mut self,
        step: u64,
        lr: f32,
        inputs: &mut Vec<u32>,
        targets: &mut Vec<u32>,
    ) -> (f32, f32) {
        let o = &self.options;
        let accum = o.grad_accum as u64;
        self.model.zero_grads();
        let mut loss = 0f32;
        for micro in 0..accum {
            batch_at(
                self.train,
                o.batch,
                o.seq,
                o.seed,
                step * accum + micro,
                inputs,
                targets,
            );
            loss += self.model.forward_backward(inputs, targets) / accum as f32;
        }
        if accum > 1 {
            let inv = 1.0 / accum as f32;
            self.model.grads.iter_mut().for_each(|g| *g *= inv);
        }
        let grad_norm = clip_grad_norm(&mut self.model.grads, 1.0);
        let TrainModel { params, grads, .. } = &mut self.model;
        self.opt.update(params, grads, lr);
        (loss, grad_norm)
    }

    fn open_log(&self) -> Result<std::fs::File, DataError> {
        let path = self.out.join("log.csv");
        let fresh = !path.exists() || self.step == 0;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(&path)
            .map_err(|e| DataError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
        if fresh {
            f.write_all(CSV_HEADER.as_bytes())
                .map_err(|e| DataError::Io {
                    path: path.display().to_string(),
                    source: e,
                })?;
        }
        Ok(f)
    }

    /// Mean loss over the same `eval_batches` validation batches every time.
    pub fn validation_loss(&mut self) -> f32 {
        let o = &self.options;
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        let mut total = 0f32;
        for k in 0..o.eval_batches as u64 {
            batch_at(
                self.val,
                o.batch,
                o.seq,
                o.seed ^ 0x005E_ED0F_7A11,
                k,
                &mut inputs,
                &mut targets,
            );
            total += self.model.forward(&inputs, &targets);
        }
        total / o.eval_batches as f32
    }

    /// A short greedy-free sample (top-k 40) from `<|endoftext|>`.
    fn sample(&self) -> String {
        let model = Model::from_parts(
            self.model.config,
            weights_from_params(&self.model.config, &self.model.params),
        );
        let mut g = gpt2_generate::Generator::new(&model);
        let opts = gpt2_generate::GenerateOptions {
            max_tokens: 48,
            sampling: gpt2_generate::SamplingParams::default(),
            seed: self.options.seed,
            stop: Vec::new(),
            n: 1,
            truncate: gpt2_generate::Truncate::Error,
            adjust: Default::default(),
        };
        match g.generate(&[], &opts, &mut |_, _| {}) {
            Ok(c) => c.into_iter().next().map(|c| c.text).unwrap_or_default(),
            Err(e) => format!("(sampling failed: {e})"),
        }
    }
}
