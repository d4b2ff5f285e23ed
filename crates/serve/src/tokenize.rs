//! The tokenizer over HTTP, for clients that keep no copy of GPT-2's BPE
//! files: `GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`, in
//! the shapes of vLLM's server, which lm-evaluation-harness's
//! `RemoteTokenizer` (`tokenizer_backend=remote`, lm_eval/utils.py in
//! 0.4.13) reads, and of llama.cpp's server (`content`, `with_pieces`).
//! All need the `score` scope. `<|endoftext|>` in a text is the special
//! token, as Hugging Face's tokenizer (and so vLLM) encodes it.

use crate::api::{ApiError, DetokenizeRequest, TokenizeRequest};
use crate::app::AppState;
use crate::audit::{respond, AuditInfo, RequestAudit};
use crate::store::{KeyInfo, Scope};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use gpt2_model::END_OF_TEXT;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::sync::Arc;

/// The key (with `score`) and the body, admitted at the key's rate (no
/// model runs, so no tokens are reserved).
async fn authorized<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    audit: &mut RequestAudit,
) -> Result<(KeyInfo, T), ApiError> {
    let (key, req) = audit.authorized(headers, body, Scope::Score).await?;
    audit.admit(&key, 0, 0)?;
    Ok((key, req))
}

fn n_ctx(s: &AppState, key: &KeyInfo, model: Option<&str>) -> Result<usize, ApiError> {
    Ok(s.model(key, model)?.model.config().n_ctx)
}

pub async fn tokenize(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let mut audit = RequestAudit::new(s.clone(), "/tokenize");
    let result = async {
        let (key, req): (_, TokenizeRequest) = authorized(&headers, body, &mut audit).await?;
        let max_model_len = n_ctx(&s, &key, req.model.as_deref())?;
        let ids = s
            .tokenizer
            .encode_with_special(req.text()?)
            .map_err(|e| ApiError::invalid(e.to_string()).param("prompt"))?;
        let tokens = if req.with_pieces.unwrap_or(false) {
            json!(ids
                .iter()
                .map(|&id| json!({"id": id, "piece": s.tokenizer.token_text(id)}))
                .collect::<Vec<_>>())
        } else {
            json!(ids)
        };
        Ok(axum::Json(json!({
            "tokens": tokens,
            "count": ids.len(),
            "max_model_len": max_model_len,
        }))
        .into_response())
    }
    .await;
    audit.respond(result)
}

pub async fn detokenize(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut audit = RequestAudit::new(s.clone(), "/detokenize");
    let result = async {
        let (key, req): (_, DetokenizeRequest) = authorized(&headers, body, &mut audit).await?;
        n_ctx(&s, &key, req.model.as_deref())?;
        let text = s
            .tokenizer
            .decode(&req.tokens)
            .map_err(|e| ApiError::invalid(e.to_string()).param("tokens"))?;
        // vLLM answers `prompt`, llama.cpp `content`: both, so either reads it.
        Ok(axum::Json(json!({"prompt": text, "content": text})).into_response())
    }
    .await;
    audit.respond(result)
}

pub async fn tokenizer_info(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut info = AuditInfo::default();
    let result = (|| {
        let key = s.gate.authenticate(&headers)?;
        info.key_id = Some(key.id.clone());
        s.gate.require_scope(&key, Scope::Score)?;
        let eot = s.tokenizer.token_text(END_OF_TEXT);
        Ok(axum::Json(json!({
            "tokenizer_class": "GPT2TokenizerFast",
            "vocab_size": s.tokenizer.vocab_size(),
            "model_max_length": n_ctx(&s, &key, None)?,
            "eos_token": eot,
            "bos_token": eot,
            "unk_token": eot,
            "pad_token": null,
            "add_bos_token": false,
            "add_eos_token": false,
        }))
        .into_response())
    })();
    respond(result, info)
}
