//! gpt2-provenance: the three known defences against mass-produced
//! machine text, each measurable.
//!
//! - [`stats`]: zero-shot detector statistics from one forward pass
//!   (log-likelihood, log-rank, entropy, LRR, GLTR buckets,
//!   Fast-DetectGPT's analytic criterion, Binoculars with two models).
//! - [`detector`]: trained detectors, cross-validated and calibrated:
//!   logistic regression over those statistics, and (in [`classifier`]) a
//!   fine-tuned GPT-2 sequence classifier.
//! - [`roc`]: calibration of thresholds at target false-positive rates and
//!   evaluation (AUROC, TPR at a fixed FPR, bootstrap intervals).
//! - [`watermark`]: keyed watermarks applied during generation and their
//!   detectors (KGW green lists; the distortion-free Gumbel scheme).
//! - [`ledger`]: a SQLite record of everything generated, searchable by
//!   exact hash and by MinHash similarity.

pub mod classifier;
pub mod detector;
pub mod ledger;
pub mod roc;
mod sip;
pub mod stats;
pub mod watermark;
pub mod watermark_key;
