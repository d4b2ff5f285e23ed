//! What every handler shares: the models and their engines, the gate, the
//! ledger (a writer thread and a read connection), the watermark, the
//! compute pool, and the request-body limits.

use crate::api::ApiError;
use crate::engine::Queue;
use crate::gate::{blocking, db_failure, internal, lock, Gate};
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::store::KeyInfo;
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use futures_util::StreamExt;
use gpt2_model::{Model, Tokenizer};
use gpt2_provenance::ledger::Ledger;
use gpt2_provenance::roc::Thresholds;
use gpt2_provenance::watermark::Prf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

pub struct ModelEntry {
    pub name: String,
    pub model: Arc<Model>,
    pub queue: Queue,
}

pub struct AppState {
    pub models: Vec<ModelEntry>,
    pub gate: Gate,
    /// A read connection for lookups (the recorder thread owns the writer).
    pub ledger_reader: Mutex<Ledger>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The server's watermark key, for detection.
    pub prf: Prf,
    pub key_id: String,
    pub tokenizer: Tokenizer,
    pub pool: Arc<rayon::ThreadPool>,
    /// Bounds concurrent scoring (echo logprobs, detection) beside the engine.
    pub scoring: Arc<Semaphore>,
    pub thresholds: Option<Thresholds>,
    /// A trained detector (its calibrated verdict in /v1/detect).
    pub detector: Option<ServedDetector>,
    pub body_limit: usize,
    pub body_timeout: Duration,
}

/// A trained detector the server reports the verdict of.
pub struct ServedDetector {
    pub detector: gpt2_provenance::detector::Detector,
    /// The served model whose statistics a feature detector reads (its
    /// verdict is given for that model's requests only); `None` for a
    /// classifier, which reads every request's text itself.
    pub statistics_of: Option<String>,
}

impl ServedDetector {
    /// Whether it judges requests scored by the served model `name`.
    pub fn judges(&self, name: &str) -> bool {
        self.statistics_of.as_deref().is_none_or(|m| m == name)
    }
}

/// Set when the request that asked for a computation is gone; long
/// computations check it between units of work.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Cancels on drop: held by the future that awaits the computation.
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0 .0.store(true, Ordering::Relaxed);
    }
}

impl AppState {
    /// The model `name` names (the first when none), if the key may use it.
    pub fn model(&self, key: &KeyInfo, name: Option<&str>) -> Result<&ModelEntry, ApiError> {
        let entry = match name {
            None => self.models.first(),
            Some(n) => self.models.iter().find(|m| m.name == n),
        };
        let entry = entry.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "no model {:?} here (see GET /v1/models)",
                    name.unwrap_or_default()
                ),
            )
            .param("model")
            .code("model_not_found")
        })?;
        if !key.allows_model(&entry.name) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                format!("this key may not use the model {:?}", entry.name),
            )
            .param("model")
            .code("model_not_allowed"));
        }
        Ok(entry)
    }

    /// Reads a request body: at most `body_limit` bytes, within
    /// `body_timeout` (a client that trickles its body gets a 408).
    pub async fn read_body(&self, body: Body) -> Result<Bytes, ApiError> {
        let limit = self.body_limit;
        let read = async {
            let mut stream = body.into_data_stream();
            let mut buf = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::invalid(format!("could not read the request body: {e}"))
                })?;
                if buf.len() + chunk.len() > limit {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid_request_error",
                        format!("the request body is larger than the limit of {limit} bytes"),
                    )
                    .code("body_too_large"));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Bytes::from(buf))
        };
        tokio::time::timeout(self.body_timeout, read)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "invalid_request_error",
                    format!(
                        "the request body did not arrive within {} s",
                        self.body_timeout.as_secs()
                    ),
                )
                .code("body_timeout")
            })?
    }

    /// Runs `f` on the compute pool, beside the engine, at most a few at
    /// once. If the awaiting request is dropped (its client hung up), `f`
    /// sees its `Cancel` set and should stop at its next check.
    pub async fn compute<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&AppState, &Cancel) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let cancel = Cancel::default();
        let _on_drop = CancelOnDrop(cancel.clone());
        let permit = self.scoring.clone().acquire_owned().await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down",
            )
            .retry_after(1)
        })?;
        let s = self.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the work ends, even if the request is gone.
            let _permit = permit;
            s.pool.install(|| f(&s, &cancel))
        })
        .await
        .map_err(|e| internal("a scoring task failed", e))
    }

    /// Ledger matches of `text`, each with its record's provenance (never
    /// the stored text).
    pub fn lookup(&self, text: &str, min_score: f64) -> Result<Vec<serde_json::Value>, ApiError> {
        blocking(|| self.lookup_now(text, min_score))
    }

    fn lookup_now(&self, text: &str, min_score: f64) -> Result<Vec<serde_json::Value>, ApiError> {
        let mut ledger = lock(&self.ledger_reader);
        let matches = ledger
            .lookup_with(text, min_score)
            .map_err(|e| db_failure("the ledger could not be searched", e))?;
        matches
            .iter()
            .map(|m| {
                let r = ledger
                    .get(m.record_id)
                    .map_err(|e| db_failure("the ledger could not be read", e))?;
                Ok(serde_json::json!({
                    "record_id": m.record_id,
                    "score": m.score,
                    "exact": m.exact,
                    "created": r.as_ref().map(|r| r.created),
                    "caller": r.as_ref().and_then(|r| r.caller.clone()),
                    "model": r.as_ref().and_then(|r| r.model.clone()),
                    "watermark_key_id": r.as_ref().and_then(|r| r.watermark_key_id.clone()),
                }))
            })
            .collect()
    }
}
