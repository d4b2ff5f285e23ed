//! The audit trail: one row per request (key, endpoint, model, tokens,
//! status, latency, note) and one metrics observation.
//!
//! Requests that do work carry a [`RequestAudit`], a drop guard: however
//! the request ends (a response, an error, a stream that runs out, or a
//! client that hangs up and so drops the handler mid-way), its row is
//! written once, charging the tokens actually computed, and the quota
//! reservation is released. Light requests leave an [`AuditInfo`] on the
//! response for the `observe` middleware instead.

use crate::api::{parse_json, ApiError};
use crate::app::AppState;
use crate::gate::Reservation;
use crate::store::{now_ms, AuditEntry, KeyInfo, Scope};
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a request's audit row records.
#[derive(Debug, Clone, Default)]
pub struct AuditInfo {
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub note: Option<String>,
    /// The row is written by a [`RequestAudit`], not by `observe`.
    pub guarded: bool,
    /// The request's claim on its key's quota, settled with its row.
    pub reservation: Reservation,
}

/// Longest note an audit row keeps, in bytes: the note holds text a
/// client chose (`user`, an unknown model's name, an error that quotes the
/// request), and one request must not be able to grow the log by much.
pub const MAX_NOTE_BYTES: usize = 512;

impl AuditInfo {
    /// Appends to the note, which is cut at [`MAX_NOTE_BYTES`].
    pub fn add_note(&mut self, note: &str) {
        let mut n = match self.note.take() {
            Some(n) => format!("{n}; {note}"),
            None => note.to_string(),
        };
        if n.len() > MAX_NOTE_BYTES {
            let mut cut = MAX_NOTE_BYTES - 3;
            while !n.is_char_boundary(cut) {
                cut -= 1;
            }
            n.truncate(cut);
            n.push_str("...");
        }
        self.note = Some(n);
    }
}

/// Status recorded for a request whose client left before the response
/// (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// The audit row of one request, written when it is finished or dropped.
pub struct RequestAudit {
    app: Arc<AppState>,
    endpoint: &'static str,
    start: Instant,
    pub info: AuditInfo,
    /// Tokens generated so far (the engine counts them as it goes).
    pub progress: Arc<AtomicU64>,
    written: bool,
}

impl RequestAudit {
    pub fn new(app: Arc<AppState>, endpoint: &'static str) -> RequestAudit {
        RequestAudit {
            app,
            endpoint,
            start: Instant::now(),
            info: AuditInfo {
                guarded: true,
                ..AuditInfo::default()
            },
            progress: Arc::default(),
            written: false,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// What every endpoint with a JSON body but completions checks first:
    /// the key (401), the body (413, 408, 400), the scope (403), and a key
    /// whose day is already used up (429). The endpoint then admits the
    /// request with its size ([`RequestAudit::admit`]).
    pub async fn authorized<T: DeserializeOwned>(
        &mut self,
        headers: &HeaderMap,
        body: Body,
        scope: Scope,
    ) -> Result<(KeyInfo, T), ApiError> {
        let gate = &self.app.gate;
        let key = gate.authenticate(headers)?;
        self.info.key_id = Some(key.id.clone());
        let bytes = self.app.read_body(body).await?;
        let req = parse_json(&bytes)?;
        gate.require_scope(&key, scope)?;
        gate.check_quota(&key)?;
        Ok((key, req))
    }

    /// Admits the request at its key's rate and quota, reserving `most`
    /// tokens until the row is written (see `Gate::admit`), and records its
    /// `prompt_tokens`. Called once, before the request computes anything;
    /// a refused request is charged nothing.
    pub fn admit(&mut self, key: &KeyInfo, prompt_tokens: u64, most: u64) -> Result<(), ApiError> {
        self.info.reservation = self.app.gate.admit(key, self.endpoint, most)?;
        self.info.prompt_tokens = prompt_tokens;
        Ok(())
    }

    /// Moves the duty to write the row to a new guard (a stream's task).
    pub fn hand_off(&mut self) -> RequestAudit {
        self.written = true;
        RequestAudit {
            app: self.app.clone(),
            endpoint: self.endpoint,
            start: self.start,
            info: std::mem::take(&mut self.info),
            progress: self.progress.clone(),
            written: false,
        }
    }

    /// Writes the row with `status`.
    pub fn finish(mut self, status: u16) {
        self.write(status);
    }

    /// Turns the handler's result into the response and writes the row.
    pub fn respond(mut self, result: Result<Response, ApiError>) -> Response {
        let mut r = match result {
            Ok(r) => r,
            Err(e) => {
                self.info.add_note(&e.message);
                e.into_response()
            }
        };
        self.write(r.status().as_u16());
        r.extensions_mut().insert(AuditInfo {
            guarded: true,
            ..AuditInfo::default()
        });
        r
    }

    fn write(&mut self, status: u16) {
        if self.written {
            return;
        }
        self.written = true;
        let generated = self.progress.load(Ordering::Relaxed);
        self.info.completion_tokens = self.info.completion_tokens.max(generated);
        let info = std::mem::take(&mut self.info);
        record(&self.app, self.endpoint, status, self.start.elapsed(), info);
    }
}

impl Drop for RequestAudit {
    fn drop(&mut self) {
        if !self.written {
            self.info
                .add_note("the client disconnected before the response");
            self.write(CLIENT_CLOSED);
        }
    }
}

/// Writes the audit row and the metrics of a finished request, settling
/// its quota reservation (the tokens now count in the row).
pub fn record(app: &AppState, endpoint: &str, status: u16, elapsed: Duration, info: AuditInfo) {
    app.metrics
        .observe_request(endpoint, status, elapsed.as_secs_f64());
    if matches!(endpoint, "/health" | "/" | "/favicon.ico") {
        return; // no key, no data: not worth a row per load-balancer poll
    }
    if info.key_id.is_none() {
        app.metrics.unauthenticated.fetch_add(1, Ordering::Relaxed);
    }
    let mut entry = AuditEntry {
        time_ms: now_ms(),
        key_id: info.key_id.clone(),
        endpoint: endpoint.to_string(),
        model: info.model,
        prompt_tokens: info.prompt_tokens,
        completion_tokens: info.completion_tokens,
        status,
        latency_ms: elapsed.as_secs_f64() * 1000.0,
        note: info.note,
    };
    match app.gate.settle(&mut entry, info.reservation) {
        Ok(true) => {}
        Ok(false) => {
            app.metrics
                .unauthenticated_unaudited
                .fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => eprintln!("warning: could not write the audit log: {e}"),
    }
}

/// Puts the audit information of a light request on its response.
pub fn respond(result: Result<Response, ApiError>, mut info: AuditInfo) -> Response {
    let mut r = match result {
        Ok(r) => r,
        Err(e) => {
            info.add_note(&e.message);
            e.into_response()
        }
    };
    r.extensions_mut().insert(info);
    r
}

/// Audits every request that no guard audits.
pub async fn observe(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
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
    if !info.guarded {
        record(&s, &endpoint, resp.status().as_u16(), start.elapsed(), info);
    }
    resp
}
