//! The gate: who may do what. API keys (401), scopes (403), requests per
//! minute and tokens per UTC day (429), with the tokens of requests in
//! flight reserved against the quota until their audit rows are written.

use crate::api::ApiError;
use crate::store::{now_ms, AuditEntry, KeyInfo, Scope, Store};
use axum::http::{header, HeaderMap, StatusCode};
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Gate {
    store: Mutex<Store>,
    rates: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Per key: tokens that requests in flight may still use, counted
    /// against the daily quota until the request is audited.
    reserved: Mutex<HashMap<String, u64>>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn internal(message: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
}

impl Gate {
    pub fn new(store: Store) -> Gate {
        Gate {
            store: Mutex::new(store),
            rates: Mutex::default(),
            reserved: Mutex::default(),
        }
    }

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

    /// Requests per minute (a sliding window, in memory) and tokens per UTC
    /// day (from the audit log, so it survives restarts, plus what requests
    /// in flight have reserved). A request is refused once the day's tokens
    /// have reached the quota.
    pub fn check_limits(&self, key: &KeyInfo) -> Result<(), ApiError> {
        if let Some(rpm) = key.requests_per_minute {
            self.check_rate(key, rpm)?;
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

    fn check_rate(&self, key: &KeyInfo, rpm: u32) -> Result<(), ApiError> {
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
        Ok(())
    }

    /// Counts `tokens` against the key's daily quota until `release`;
    /// returns what was reserved (keys without a quota reserve nothing).
    pub fn reserve(&self, key: &KeyInfo, tokens: u64) -> u64 {
        if key.tokens_per_day.is_none() {
            return 0;
        }
        *lock(&self.reserved).entry(key.id.clone()).or_default() += tokens;
        tokens
    }

    pub fn release(&self, key_id: Option<&str>, tokens: u64) {
        let (Some(id), true) = (key_id, tokens > 0) else {
            return;
        };
        let mut reserved = lock(&self.reserved);
        if let Some(r) = reserved.get_mut(id) {
            *r = r.saturating_sub(tokens);
            if *r == 0 {
                reserved.remove(id);
            }
        }
    }

    /// Writes one audit row.
    pub fn audit(&self, entry: &AuditEntry) -> crate::store::Result<()> {
        lock(&self.store).audit(entry)
    }
}
