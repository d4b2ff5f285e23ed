//! The HTTP server: routes, authentication, limits, auditing, and the
//! run loop with graceful shutdown.
//!
//! Order of checks on a request: key (401), body (413/408/400), model
//! (404), scope and model access (403), rate and quota (429), lengths
//! (400), queue (503). Every request except `/health` and the static page
//! leaves one audit row and one metrics observation, written by the
//! `observe` middleware from what the handler put in the response's
//! extensions (streams write theirs when they end).

use crate::api::ApiError;
use crate::completions;
use crate::engine::{self, EngineConfig, Queue, Watermarker};
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::state::StateDir;
use crate::store::{now_ms, AuditEntry, KeyInfo, Scope, Store};
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use gpt2_model::{Model, Tokenizer};
use gpt2_provenance::ledger::Ledger;
use gpt2_provenance::roc::Thresholds;
use gpt2_provenance::watermark::{GumbelChooser, KgwProcessor, Prf};
use gpt2_provenance::watermark_key::{Scheme, WatermarkKey};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Ledger(#[from] gpt2_provenance::ledger::LedgerError),
    #[error("{0}")]
    Io(String),
}

/// Everything `gpt2 serve` is configured with.
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub state: StateDir,
    /// (name, model); the first is the default for requests without `model`.
    pub models: Vec<(String, Model)>,
    /// Sequences decoded together per model.
    pub slots: usize,
    /// Requests waiting for slots, per model, before 503s.
    pub queue: usize,
    pub threads: usize,
    pub body_limit: usize,
    pub body_timeout: Duration,
    /// Time a client has to send its request line and headers (against
    /// slow-header clients holding connections open).
    pub header_timeout: Duration,
    pub step_delay: Duration,
    pub thresholds: Option<Thresholds>,
    /// Called with the bound address once the server accepts connections.
    pub on_listening: Box<dyn FnOnce(SocketAddr) + Send>,
}

pub struct ModelEntry {
    pub name: String,
    pub model: Arc<Model>,
    pub queue: Queue,
}

/// What handlers share.
pub struct AppState {
    pub models: Vec<ModelEntry>,
    store: Mutex<Store>,
    /// A read connection for lookups (the recorder thread owns the writer).
    ledger_reader: Mutex<Ledger>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub prf: Prf,
    pub key_id: String,
    pub tokenizer: Tokenizer,
    pub pool: Arc<rayon::ThreadPool>,
    /// Bounds concurrent scoring (echo logprobs, detection) beside the engine.
    pub scoring: Semaphore,
    pub thresholds: Option<Thresholds>,
    rates: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Per key: tokens that requests in flight may still use (prompt plus
    /// max_tokens for every choice), counted against the daily quota
    /// until the request is audited.
    reserved: Mutex<HashMap<String, u64>>,
    body_limit: usize,
    body_timeout: Duration,
}

/// What the `observe` middleware records for a request.
#[derive(Debug, Clone, Default)]
pub struct AuditInfo {
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub note: Option<String>,
    /// A stream records itself when it ends.
    pub deferred: bool,
    /// Quota tokens reserved for this request, released when it is audited.
    pub reserved: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AppState {
    /// The key in `Authorization: Bearer KEY`, if live.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<KeyInfo, ApiError> {
        let unauthorized = |m: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", m)
                .code("invalid_api_key")
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing API key: send Authorization: Bearer KEY"))?;
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer KEY"))?;
        let found = lock(&self.store)
            .authenticate(secret)
            .map_err(|e| internal(&e.to_string()))?;
        found.ok_or_else(|| unauthorized("unknown or revoked API key"))
    }

    pub fn require_scope(&self, key: &KeyInfo, scope: Scope) -> Result<(), ApiError> {
        if key.has_scope(scope) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            format!("this key lacks the {} scope", scope.name()),
        )
        .code("insufficient_scope"))
    }

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

    /// Requests per minute (a sliding window, in memory) and tokens per UTC
    /// day (from the audit log, so it survives restarts). A request is
    /// refused once the day's tokens have reached the quota; the request
    /// that crosses it is still served.
    pub fn check_limits(&self, key: &KeyInfo) -> Result<(), ApiError> {
        if let Some(rpm) = key.requests_per_minute {
            let now = Instant::now();
            let mut rates = lock(&self.rates);
            let window = rates.entry(key.id.clone()).or_default();
            while window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
            {
                window.pop_front();
            }
            if window.len() >= rpm as usize {
                let wait = window
                    .front()
                    .map(|t| 60u64.saturating_sub(now.duration_since(*t).as_secs()))
                    .unwrap_or(60);
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!("rate limit of {rpm} requests per minute reached"),
                )
                .code("rate_limit_exceeded")
                .retry_after(wait));
            }
            window.push_back(now);
        }
        if let Some(limit) = key.tokens_per_day {
            let now = now_ms();
            let day_ms = 86_400_000;
            let start = now - now.rem_euclid(day_ms);
            let used = lock(&self.store)
                .tokens_used_since(&key.id, start)
                .map_err(|e| internal(&e.to_string()))?;
            let used = used + lock(&self.reserved).get(&key.id).copied().unwrap_or(0);
            if used >= limit {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    format!(
                        "daily quota of {limit} tokens used ({used}, counting requests in flight); \
                         it resets at 00:00 UTC"
                    ),
                )
                .code("quota_exceeded")
                .retry_after(((start + day_ms - now) / 1000) as u64));
            }
        }
        Ok(())
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

    /// Counts `tokens` against the key's daily quota until the request is
    /// audited (keys without a quota reserve nothing).
    pub fn reserve(&self, key: &KeyInfo, tokens: u64, info: &mut AuditInfo) {
        if key.tokens_per_day.is_some() {
            *lock(&self.reserved).entry(key.id.clone()).or_default() += tokens;
            info.reserved += tokens;
        }
    }

    fn release(&self, key_id: Option<&str>, tokens: u64) {
        if tokens == 0 {
            return;
        }
        if let Some(id) = key_id {
            let mut reserved = lock(&self.reserved);
            if let Some(r) = reserved.get_mut(id) {
                *r = r.saturating_sub(tokens);
                if *r == 0 {
                    reserved.remove(id);
                }
            }
        }
    }

    /// Writes the audit row and the metrics of a finished request.
    pub fn finish_request(&self, endpoint: &str, status: u16, elapsed: Duration, info: AuditInfo) {
        self.metrics
            .observe_request(endpoint, status, elapsed.as_secs_f64());
        if matches!(endpoint, "/health" | "/" | "/favicon.ico") {
            return; // no key, no data: not worth a row per load-balancer poll
        }
        let reserved = (info.key_id.clone(), info.reserved);
        let entry = AuditEntry {
            time_ms: now_ms(),
            key_id: info.key_id,
            endpoint: endpoint.to_string(),
            model: info.model,
            prompt_tokens: info.prompt_tokens,
            completion_tokens: info.completion_tokens,
            status,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            note: info.note,
        };
        if let Err(e) = lock(&self.store).audit(&entry) {
            eprintln!("warning: could not write the audit log: {e}");
        }
        // After the audit row: the tokens now count there instead.
        self.release(reserved.0.as_deref(), reserved.1);
    }

    /// Runs `f` on the compute pool, beside the engine, at most a few at once.
    pub async fn compute<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&AppState) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self
            .scoring
            .acquire()
            .await
            .map_err(|_| internal("the server is shutting down"))?;
        let s = self.clone();
        tokio::task::spawn_blocking(move || s.pool.install(|| f(&s)))
            .await
            .map_err(|e| internal(&format!("a scoring task failed: {e}")))
    }

    /// Ledger matches of `text`, each with its record's provenance (never
    /// the stored text).
    pub fn lookup(&self, text: &str, min_score: f64) -> Result<Vec<serde_json::Value>, ApiError> {
        let ledger = lock(&self.ledger_reader);
        let matches = ledger
            .lookup_with(text, min_score)
            .map_err(|e| internal(&e.to_string()))?;
        matches
            .iter()
            .map(|m| {
                let r = ledger
                    .get(m.record_id)
                    .map_err(|e| internal(&e.to_string()))?;
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

pub fn internal(message: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
}

/// Puts the audit information on the response for `observe`.
pub fn respond(result: Result<Response, ApiError>, mut info: AuditInfo) -> Response {
    let mut r = match result {
        Ok(r) => r,
        Err(e) => {
            info.note = Some(e.message.clone());
            e.into_response()
        }
    };
    r.extensions_mut().insert(info);
    r
}

async fn observe(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let mut resp = next.run(req).await;
    let info = resp
        .extensions_mut()
        .remove::<AuditInfo>()
        .unwrap_or_default();
    if !info.deferred {
        s.finish_request(&endpoint, resp.status().as_u16(), start.elapsed(), info);
    }
    resp
}

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
        let key = s.authenticate(&headers)?;
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
        let key = s.authenticate(&headers)?;
        info.key_id = Some(key.id.clone());
        s.require_scope(&key, Scope::Admin)?;
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
    let result = s.authenticate(&headers).map(|key| {
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
        .route("/v1/detect", post(crate::detect::detect))
        .route(
            "/v1/watermark/detect",
            post(crate::detect::watermark_detect),
        )
        .route("/v1/provenance/lookup", post(crate::detect::lookup))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

fn watermarker(key: &WatermarkKey, vocab: usize) -> Watermarker {
    let prf = Prf::new(key.clone(), vocab);
    match key.scheme {
        Scheme::Kgw => Watermarker::Kgw(KgwProcessor::new(prf)),
        Scheme::Gumbel => Watermarker::Gumbel(GumbelChooser::new(prf)),
    }
}

/// Runs the server until SIGTERM or ctrl-c, then stops accepting, finishes
/// the requests in flight, and returns.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    let io = |e: std::io::Error| ServeError::Io(e.to_string());
    if config.models.is_empty() {
        return Err(ServeError::Io("no model to serve".into()));
    }
    let store = config.state.store()?;
    let key = config.state.watermark_key()?;
    let ledger_path = config.state.ledger_path();
    let ledger = Ledger::open(&ledger_path)?;
    let ledger_reader = Ledger::open(&ledger_path)?;
    let metrics = Arc::new(Metrics::default());
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.max(1))
            .build()
            .map_err(|e| ServeError::Io(e.to_string()))?,
    );
    let (recorder, recorder_thread) = Recorder::start(ledger, metrics.clone()).map_err(io)?;
    let mut engines = Vec::new();
    let mut models = Vec::new();
    for (name, model) in config.models {
        let model = Arc::new(model);
        let (queue, handle) = engine::start(
            model.clone(),
            watermarker(&key, model.config().vocab_size),
            EngineConfig {
                slots: config.slots.max(1),
                queue: config.queue,
                step_delay: config.step_delay,
            },
            pool.clone(),
            metrics.clone(),
        )
        .map_err(io)?;
        engines.push(handle);
        models.push(ModelEntry { name, model, queue });
    }
    let tokenizer = Tokenizer::gpt2();
    let state = Arc::new(AppState {
        models,
        store: Mutex::new(store),
        ledger_reader: Mutex::new(ledger_reader),
        recorder,
        metrics,
        prf: Prf::new(key.clone(), tokenizer.vocab_size()),
        key_id: key.id.clone(),
        tokenizer,
        pool,
        scoring: Semaphore::new(2),
        thresholds: config.thresholds,
        rates: Mutex::default(),
        reserved: Mutex::default(),
        body_limit: config.body_limit,
        body_timeout: config.body_timeout,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io)?;
    let addr = config.addr;
    let header_timeout = config.header_timeout;
    let on_listening = config.on_listening;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Io(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener.local_addr().map_err(io)?;
        on_listening(bound);
        serve(listener, router(state), header_timeout).await;
        Ok(())
    });
    // The router (and with it every queue and recorder handle) is gone:
    // the engines finish what they hold, then the ledger writer drains.
    runtime.shutdown_timeout(Duration::from_secs(5));
    for e in engines {
        let _ = e.join();
    }
    let _ = recorder_thread.join();
    result
}

/// Accepts connections until the shutdown signal, then waits for the
/// connections in flight (idle keep-alive ones are closed at once).
/// axum's own `serve` has no header timeout, hence hyper directly.
async fn serve(listener: tokio::net::TcpListener, app: Router, header_timeout: Duration) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else {
                    // Out of file descriptors and the like: wait, go on.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut signal => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: no new connections; finishing the requests in flight");
}
