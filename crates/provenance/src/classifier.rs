//! A fine-tuned GPT-2 sequence classifier, as its directory holds it: a
//! Hugging Face `GPT2ForSequenceClassification` checkpoint
//! (`config.json`, `model.safetensors` with the `transformer.*` tensors and
//! `score.weight`, `[2, C]`, no bias) beside `detector.json`, which says how
//! it was trained, validated and calibrated. `transformers` loads the
//! directory unchanged.
//!
//! The class logits are `score.weight @ h`, where `h` is the final
//! (LayerNormed) hidden state of the text's last token that is not the
//! padding token, as `transformers` picks it. The detector's score is the
//! log-odds `logit[machine] - logit[human]`.
//!
//! Training lives in `gpt2_train::classify`; this module is what every
//! user of a trained classifier (the CLI, the server) shares.

use crate::detector::DetectorError;
use crate::roc::Thresholds;
use gpt2_model::model::{Batch, Output, Scratch};
use gpt2_model::Model;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `kind` of a fine-tuned classifier in `detector.json`.
pub const CLASSIFIER_KIND: &str = "classifier";
/// The class labels, in logit order (`id2label`).
pub const LABELS: [&str; 2] = ["human", "machine"];
/// The name of the classification head's weight in `model.safetensors`.
pub const SCORE_TENSOR: &str = "score.weight";
/// Texts scored at once (one cache slot each).
const BATCH: usize = 8;

/// What validation on the held-out texts measured, at the kept step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    pub human_texts: usize,
    pub machine_texts: usize,
    pub auroc: f64,
    pub tpr_at_1pct_fpr: f64,
    pub tpr_at_01pct_fpr: f64,
    /// The mean cross-entropy of the held-out texts.
    pub loss: f64,
}

/// `detector.json` of a classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierCard {
    pub kind: String,
    pub tokenizer: String,
    /// The checkpoint it was fine-tuned from (`--model`).
    pub base_model: String,
    /// Tokens read from the start of each text; the rest is not seen.
    pub max_tokens: usize,
    pub pad_token_id: u32,
    /// Thresholds on the score, calibrated on the held-out human texts.
    pub thresholds: Thresholds,
    pub validation: HeldOut,
    /// The run's settings and where it stopped (also in `metrics.json`).
    pub training: serde_json::Value,
}

/// A loaded classifier: its model, its head and its card.
pub struct Classifier {
    pub card: ClassifierCard,
    model: Model,
    /// `[2, C]`, row per label.
    score: Vec<f32>,
}

/// The row that `transformers` classifies a sequence by: its last token
/// that is not `pad` (0 when every token is padding).
pub fn last_position(tokens: &[u32], pad: u32) -> usize {
    tokens.iter().rposition(|&t| t != pad).unwrap_or(0)
}

/// The class logits of one final hidden state `h` (`C` floats) under the
/// head `score` (`[2, C]`).
pub fn class_logits(score: &[f32], h: &[f32]) -> [f32; 2] {
    let c = h.len();
    let dot = |row: &[f32]| row.iter().zip(h).map(|(w, x)| w * x).sum::<f32>();
    [dot(&score[..c]), dot(&score[c..2 * c])]
}

/// The machine score of class logits: `logit[machine] - logit[human]`.
pub fn log_odds(logits: [f32; 2]) -> f64 {
    logits[1] as f64 - logits[0] as f64
}

impl Classifier {
    /// Reads a classifier directory (`detector.json` of kind `classifier`,
    /// the checkpoint beside it).
    pub fn load(dir: &Path, card: ClassifierCard) -> Result<Classifier, DetectorError> {
        let err = |message: String| DetectorError {
            path: dir.display().to_string(),
            message,
        };
        if card.tokenizer != "gpt2" {
            return Err(err(format!(
                "made with the {:?} tokenizer, not GPT-2's",
                card.tokenizer
            )));
        }
        let model = Model::load_dir(dir).map_err(|e| err(e.to_string()))?;
        let c = model.config().n_embd;
        if card.max_tokens == 0 || card.max_tokens > model.config().n_ctx {
            return Err(err(format!(
                "max_tokens {} does not fit the model's context of {}",
                card.max_tokens,
                model.config().n_ctx
            )));
        }
        let score = read_score(&dir.join("model.safetensors"), c).map_err(err)?;
        Ok(Classifier { card, model, score })
    }

    /// A classifier from parts in memory (training's validation uses the
    /// same scoring as a loaded one).
    pub fn from_parts(card: ClassifierCard, model: Model, score: Vec<f32>) -> Classifier {
        assert_eq!(score.len(), 2 * model.config().n_embd, "score shape");
        Classifier { card, model, score }
    }

    /// The tokens of `text` the classifier reads.
    pub fn window<'t>(&self, tokens: &'t [u32]) -> &'t [u32] {
        &tokens[..tokens.len().min(self.card.max_tokens)]
    }

    /// The class logits of each text (token ids; each cut to `max_tokens`).
    pub fn logits(&self, texts: &[&[u32]]) -> gpt2_model::Result<Vec<[f32; 2]>> {
        let c = self.model.config().n_embd;
        let mut cache = self.model.new_cache(BATCH);
        let mut scratch = Scratch::default();
        let mut out = Vec::with_capacity(texts.len());
        for group in texts.chunks(BATCH) {
            cache.reset_all();
            let mut batch = Batch::default();
            for (slot, t) in group.iter().enumerate() {
                let t = self.window(t);
                // Trailing padding does not change the classified row's
                // state (attention is causal); it is left out.
                let end = last_position(t, self.card.pad_token_id) + 1;
                batch.push(slot, &t[..end.min(t.len())]);
            }
            let rows = self
                .model
                .forward(&batch, &mut cache, &mut scratch, Output::Last)?;
            let hidden = scratch.hidden(c);
            out.extend((0..rows).map(|r| class_logits(&self.score, &hidden[r * c..(r + 1) * c])));
        }
        Ok(out)
    }

    /// The machine score (log-odds) of each text.
    pub fn scores(&self, texts: &[&[u32]]) -> gpt2_model::Result<Vec<f64>> {
        Ok(self.logits(texts)?.into_iter().map(log_odds).collect())
    }
}

/// `score.weight` from a checkpoint, as f32 `[2, C]`.
fn read_score(path: &Path, c: usize) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let t = st.tensor(SCORE_TENSOR).map_err(|_| {
        format!(
            "{} has no {SCORE_TENSOR}: not a sequence classifier",
            path.display()
        )
    })?;
    if t.shape() != [2, c] {
        return Err(format!(
            "{SCORE_TENSOR} has shape {:?}, not [2, {c}] (two labels over the model's width)",
            t.shape()
        ));
    }
    let floats: Vec<f32> = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        safetensors::Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(format!("{SCORE_TENSOR} is {other:?}, not F32 or F16")),
    };
    Ok(floats)
}
