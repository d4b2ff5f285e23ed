//! The routes: every endpoint and the handler that serves it, plus the
//! light endpoints (health, models, metrics, the OpenAPI document and the
//! web page) that need no more than the gate.

use crate::api::ApiError;
use crate::app::AppState;
use crate::audit::{observe, respond, AuditInfo};
use crate::store::Scope;
use crate::{completions, detect, tokenize};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such endpoint (see /openapi.json)",
    )
    .into_response()
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let models: Vec<&str> = s.models.iter().map(|m| m.name.as_str()).collect();
    axum::Json(serde_json::json!({"status": "ok", "models": models})).into_response()
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut info = AuditInfo::default();
    let result = (|| {
        let key = s.gate.authenticate(&headers)?;
        info.key_id = Some(key.id.clone());
        let data: Vec<_> = s
            .models
            .iter()
            .filter(|m| key.allows_model(&m.name))
            .map(|m| {
                let c = m.model.config();
                serde_json::json!({
                    "id": m.name, "object": "model", "created": 0, "owned_by": "gpt2-rs",
                    "context_length": c.n_ctx, "n_layer": c.n_layer, "n_embd": c.n_embd,
                })
            })
            .collect();
        Ok(axum::Json(serde_json::json!({"object": "list", "data": data})).into_response())
    })();
    respond(result, info)
}

async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut info = AuditInfo::default();
    let result = (|| {
        let key = s.gate.authenticate(&headers)?;
        info.key_id = Some(key.id.clone());
        s.gate.require_scope(&key, Scope::Admin)?;
        Ok((
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            s.metrics.render(),
        )
            .into_response())
    })();
    respond(result, info)
}

async fn openapi(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut info = AuditInfo::default();
    let result = s.gate.authenticate(&headers).map(|key| {
        info.key_id = Some(key.id);
        (
            [(header::CONTENT_TYPE, "application/json")],
            include_str!("openapi.json"),
        )
            .into_response()
    });
    respond(result, info)
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("web/index.html"),
    )
        .into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/detect", post(detect::detect))
        .route("/v1/watermark/detect", post(detect::watermark_detect))
        .route("/v1/provenance/lookup", post(detect::lookup))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/tokenizer_info", get(tokenize::tokenizer_info))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
