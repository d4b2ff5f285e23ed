//! The countermeasure endpoints: zero-shot detection with GLTR ranks
//! (`/v1/detect`), the server's watermark detector
//! (`/v1/watermark/detect`), and ledger lookup (`/v1/provenance/lookup`).
//! All need the `detect` scope, and each is admitted at its key's rate and
//! quota with its text's size in tokens before it computes.

use crate::api::{ApiError, DetectRequest, LookupRequest, WatermarkDetectRequest};
use crate::app::AppState;
use crate::audit::RequestAudit;
use crate::gate::internal;
use crate::store::Scope;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use gpt2_model::score::{Scorer, Windowing};
use gpt2_provenance::stats::{gltr_bucket, statistics, Statistic};
use gpt2_provenance::watermark::detect as watermark_detect_tokens;
use serde_json::json;
use std::sync::Arc;

/// Longest text the detectors score, in tokens (a bound on the work one
/// request can ask for).
pub const MAX_DETECT_TOKENS: usize = 4096;

/// The false-positive rate whose calibrated threshold gives the verdict.
const VERDICT_FPR: f64 = 0.01;

fn tokens_of(s: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    let ids = s
        .tokenizer
        .encode(text)
        .map_err(|e| ApiError::invalid(e.to_string()).param("text"))?;
    if ids.is_empty() {
        return Err(ApiError::invalid("the text is empty").param("text"));
    }
    if ids.len() > MAX_DETECT_TOKENS {
        return Err(ApiError::invalid(format!(
            "the text has {} tokens; at most {MAX_DETECT_TOKENS} are scored per request",
            ids.len()
        ))
        .param("text"));
    }
    Ok(ids)
}

pub async fn detect(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let mut audit = RequestAudit::new(s.clone(), "/v1/detect");
    let result = async {
        let (key, req): (_, DetectRequest) =
            audit.authorized(&headers, body, Scope::Detect).await?;
        let info = &mut audit.info;
        let entry = s.model(&key, req.model.as_deref())?;
        info.model = Some(entry.name.clone());
        let ids = tokens_of(&s, &req.text)?;
        audit.admit(&key, ids.len() as u64, ids.len() as u64)?;
        let model = entry.model.clone();
        let name = entry.name.clone();
        let judged = name.clone();
        let (scores, stats, detector) = s
            .compute(move |s, _| -> gpt2_model::Result<_> {
                let scored = Scorer::new(&model).score_texts(
                    std::slice::from_ref(&ids),
                    Windowing::Rolling,
                    0,
                    &mut |_| {},
                )?;
                let scores = scored.into_iter().next().unwrap_or_default();
                let stats = statistics(&scores);
                let detector = match s.detector.as_ref().filter(|d| d.judges(&judged)) {
                    Some(d) => {
                        let score = d.detector.scores(&[(&ids, &stats)])?[0].score;
                        Some((d, d.detector.read_tokens(ids.len()), score))
                    }
                    None => None,
                }
                .map(|(d, tokens, score)| {
                    json!({
                        "kind": d.detector.kind(),
                        "score": score,
                        "false_positive_rate": VERDICT_FPR,
                        "decision": d.detector.thresholds().decide(tokens, score, VERDICT_FPR),
                        "validation_auroc": d.detector.validation_auroc(),
                    })
                });
                Ok((scores, stats, detector))
            })
            .await?
            .map_err(|e| internal("scoring the text failed", e))?;
        let verdict = s.thresholds.as_ref().and_then(|t| {
            let stat = Statistic::from_name(&t.statistic)?;
            let score = stat.machine_score(&stats)?;
            (t.model == name).then(|| {
                json!({
                    "statistic": t.statistic,
                    "score": score,
                    "false_positive_rate": VERDICT_FPR,
                    "decision": t.decide(scores.len(), score, VERDICT_FPR),
                })
            })
        });
        let tokens: Vec<_> = scores
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "text": s.tokenizer.token_text(t.id),
                    "logprob": t.logprob,
                    "rank": t.rank,
                    "entropy": t.entropy,
                    "bucket": gltr_bucket(t.rank),
                })
            })
            .collect();
        Ok(axum::Json(json!({
            "model": name,
            "statistics": stats,
            "verdict": verdict,
            "detector": detector,
            "tokens": tokens,
        }))
        .into_response())
    }
    .await;
    audit.respond(result)
}

pub async fn watermark_detect(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut audit = RequestAudit::new(s.clone(), "/v1/watermark/detect");
    let result = async {
        let (key, req): (_, WatermarkDetectRequest) =
            audit.authorized(&headers, body, Scope::Detect).await?;
        let z = req.z_threshold.unwrap_or(4.0);
        if !z.is_finite() {
            return Err(
                ApiError::invalid("z_threshold must be a finite number").param("z_threshold")
            );
        }
        let ids = tokens_of(&s, &req.text)?;
        let prompt = s
            .tokenizer
            .encode(&req.prompt)
            .map_err(|e| ApiError::invalid(e.to_string()).param("prompt"))?;
        let size = (ids.len() + prompt.len()) as u64;
        audit.admit(&key, size, size)?;
        let d = watermark_detect_tokens(&s.prf, &prompt, &ids, z);
        let mut body = json!(d);
        if !key.has_scope(Scope::Admin) {
            // Per-token labels would let a detect key learn the green lists
            // and write text the server "watermarked" (docs/serve.md).
            if let Some(o) = body.as_object_mut() {
                o.remove("green_mask");
            }
        }
        Ok(axum::Json(body).into_response())
    }
    .await;
    audit.respond(result)
}

pub async fn lookup(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let mut audit = RequestAudit::new(s.clone(), "/v1/provenance/lookup");
    let result = async {
        let (key, req): (_, LookupRequest) =
            audit.authorized(&headers, body, Scope::Detect).await?;
        let min = req
            .min_score
            .unwrap_or(gpt2_provenance::ledger::DEFAULT_MIN_SCORE);
        if !(0.0..=1.0).contains(&min) {
            return Err(ApiError::invalid("min_score must be between 0 and 1").param("min_score"));
        }
        if req.text.is_empty() {
            return Err(ApiError::invalid("the text is empty").param("text"));
        }
        let tokens = s
            .tokenizer
            .encode(&req.text)
            .map_err(|e| ApiError::invalid(e.to_string()).param("text"))?;
        audit.admit(&key, tokens.len() as u64, tokens.len() as u64)?;
        let text = req.text;
        let matches = s.compute(move |s, _| s.lookup(&text, min)).await??;
        Ok(axum::Json(json!({"matches": matches})).into_response())
    }
    .await;
    audit.respond(result)
}
