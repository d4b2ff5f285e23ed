//! The gate: who may do what. API keys (401), scopes (403), requests per
//! minute and tokens per UTC day (429). Limits are kept in the state's
//! database (see `store`), so every server sharing it enforces one quota:
//! a request that computes is admitted with a reservation of its most
//! tokens before it computes, and settled when its audit row is written.

use crate::api::ApiError;
use crate::store::{
    now_ms, seconds_to_midnight, Admission, AuditEntry, Holder, KeyInfo, Limits, Scope, Store,
    StoreError,
};
use axum::http::{header, HeaderMap, StatusCode};
use std::fmt::Display;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Gate {
    store: Mutex<Store>,
    holder: Holder,
    unauthenticated: Mutex<UnauthenticatedLog>,
}

/// A request's claim on its key's quota, settled with its audit row.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reservation {
    pub id: Option<i64>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A 500 whose body says `what` (a fixed phrase) and a reference; the
/// detail, which may name server files, goes to the server's log only.
pub fn internal(what: &str, detail: impl Display) -> ApiError {
    let reference = format!("{:08x}", rand::random::<u32>());
    eprintln!("error [{reference}]: {what}: {detail}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        format!("{what} (reference {reference}; the details are in the server's log)"),
    )
}

/// Runs `f`, which waits on the database, without stalling the async
/// workers' other requests (tokio moves them to another thread).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Seconds a client is told to wait while the database is unreachable.
pub const UNAVAILABLE_RETRY_S: u64 = 2;

/// Failures that may mean "the database is out of reach now".
pub trait Availability: Display {
    fn is_unavailable(&self) -> bool;
}

/// A failure described in words is never the database's absence.
impl Availability for &str {
    fn is_unavailable(&self) -> bool {
        false
    }
}

impl Availability for StoreError {
    fn is_unavailable(&self) -> bool {
        StoreError::is_unavailable(self)
    }
}

impl Availability for gpt2_provenance::ledger::LedgerError {
    fn is_unavailable(&self) -> bool {
        gpt2_provenance::ledger::LedgerError::is_unavailable(self)
    }
}

impl Availability for crate::recorder::RecordError {
    fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

/// A 503 with `Retry-After` when the database is out of reach (the
/// server fails closed: no text, no admission, until it returns); any
/// other failure is a 500.
pub fn db_failure(what: &str, e: impl Availability) -> ApiError {
    if !e.is_unavailable() {
        return internal(what, e);
    }
    unavailable(what, e)
}

/// The 503 of [`db_failure`]; the detail goes to the server's log.
pub fn unavailable(what: &str, detail: impl Display) -> ApiError {
    eprintln!("unavailable: {what}: {detail}");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        format!("{what}: the server's database cannot be reached; nothing was generated, try again shortly"),
    )
    .code("database_unavailable")
    .retry_after(UNAVAILABLE_RETRY_S)
}

/// Most audit rows per minute for requests without a valid key; the rest
/// are counted (in `/metrics`, and in the next row's note), not written.
pub const UNAUTHENTICATED_ROWS_PER_MINUTE: u32 = 60;

#[derive(Default)]
struct UnauthenticatedLog {
    window: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl Gate {
    pub fn new(store: Store) -> Gate {
        Gate {
            store: Mutex::new(store),
            holder: Holder::this_process(),
            unauthenticated: Mutex::default(),
        }
    }

    /// The key in `Authorization: Bearer KEY` (the scheme in any case, as
    /// RFC 7235 has it), if live.
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
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, secret)| secret.trim())
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer KEY"))?;
        let found = self
            .with_store(|s| s.authenticate(secret))
            .map_err(|e| db_failure("the key database could not be read", e))?;
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

    /// A cheap early refusal, before any work: the key's day is already
    /// used up. (The rate and the exact quota are decided by `admit`.)
    pub fn check_quota(&self, key: &KeyInfo) -> Result<(), ApiError> {
        let Some(limit) = key.tokens_per_day else {
            return Ok(());
        };
        let now = now_ms();
        let used = self
            .with_store(|s| s.used_today(&key.id, now))
            .map_err(|e| db_failure("the key database could not be read", e))?;
        if used >= limit {
            return Err(quota_used(limit, used, seconds_to_midnight(now)));
        }
        Ok(())
    }

    /// Admits a request that may use up to `tokens` (prompt and output):
    /// refused (429) at the key's rate, or when its day's usage and its
    /// requests in flight have reached its quota; otherwise the tokens are
    /// reserved until the request's audit row settles them.
    pub fn admit(
        &self,
        key: &KeyInfo,
        endpoint: &str,
        tokens: u64,
    ) -> Result<Reservation, ApiError> {
        let limits = Limits {
            requests_per_minute: key.requests_per_minute,
            tokens_per_day: key.tokens_per_day,
        };
        // Keys without limits reserve too: an open reservation is how a
        // request cut off by a dead server still gets its audit row.
        let now = now_ms();
        let answer = self
            .with_store(|s| s.admit(&key.id, endpoint, tokens, limits, &self.holder, now))
            .map_err(|e| db_failure("the key database could not be written", e))?;
        match answer {
            Admission::Reserved(id) => Ok(Reservation { id: Some(id) }),
            Admission::RateLimited { retry_after_s } => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "rate limit of {} requests per minute reached",
                    limits.requests_per_minute.unwrap_or(0)
                ),
            )
            .code("rate_limit_exceeded")
            .retry_after(retry_after_s)),
            Admission::QuotaUsed {
                used,
                retry_after_s,
            } => Err(quota_used(
                limits.tokens_per_day.unwrap_or(0),
                used,
                retry_after_s,
            )),
        }
    }

    fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        blocking(|| f(&mut lock(&self.store)))
    }

    /// Tells other servers this one is alive, and charges the reservations
    /// of servers that died mid-request: at start, then every
    /// [`HEARTBEAT_EVERY`](crate::store::HEARTBEAT_EVERY) from the
    /// server's housekeeping thread.
    pub fn housekeeping(&self) -> crate::store::Result<usize> {
        let now = now_ms();
        self.with_store(|s| {
            s.heartbeat(&self.holder, now)?;
            s.charge_abandoned(now)
        })
    }

    /// Writes a request's audit row and settles its reservation. A row
    /// without a key is written at most `UNAUTHENTICATED_ROWS_PER_MINUTE`
    /// times a minute (a flood of bad keys must not grow the log without
    /// bound); returns false when this one was left out.
    pub fn settle(
        &self,
        entry: &mut AuditEntry,
        reservation: Reservation,
    ) -> crate::store::Result<bool> {
        if entry.key_id.is_none() {
            match self.unauthenticated_row() {
                None => return Ok(false),
                Some(0) => {}
                Some(left_out) => {
                    let said = format!(
                        "{left_out} rows of requests without a valid key left out before this one"
                    );
                    entry.note = Some(match entry.note.take() {
                        Some(n) => format!("{n}; {said}"),
                        None => said,
                    });
                }
            }
        }
        self.with_store(|s| s.settle(entry, reservation.id))?;
        Ok(true)
    }

    /// Whether a row without a key may be written now, and how many were
    /// left out since the last one written.
    fn unauthenticated_row(&self) -> Option<u64> {
        let mut log = lock(&self.unauthenticated);
        let now = Instant::now();
        if log
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(60))
        {
            log.window = Some(now);
            log.written = 0;
        }
        if log.written >= UNAUTHENTICATED_ROWS_PER_MINUTE {
            log.suppressed += 1;
            return None;
        }
        log.written += 1;
        Some(std::mem::take(&mut log.suppressed))
    }
}

fn quota_used(limit: u64, used: u64, retry_after_s: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        format!(
            "daily quota of {limit} tokens used ({used}, counting requests in flight); \
             it resets at 00:00 UTC"
        ),
    )
    .code("quota_exceeded")
    .retry_after(retry_after_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_error_names_no_server_file() {
        let detail = "/srv/state/ledger.sqlite: attempt to write a readonly database";
        let e = internal("the ledger could not record the completion", detail);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !e.message.contains("/srv") && !e.message.contains(".sqlite"),
            "{}",
            e.message
        );
        assert!(e.message.contains("reference"), "{}", e.message);
    }
}
