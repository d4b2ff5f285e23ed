//! The server's own database (`keys.sqlite` in the state directory): API
//! keys, stored only as SHA-256 hashes of the secret, and the audit log of
//! every request.
//!
//! The server and the `gpt2 keys` / `gpt2 audit` commands open the same
//! file (SQLite in WAL mode, so readers never block the writer); the server
//! reads a key's row on every request, which is what makes a revocation
//! effective on the next request.
//!
//! Quotas and rates live here too, not in a process's memory, so that every
//! `gpt2 serve` sharing a state directory enforces the same ones: a request
//! is admitted by inserting a *reservation* (its most tokens) in the same
//! transaction that counts the day's usage, the reservations in flight and
//! the minute's requests; when it ends, one transaction writes its audit
//! row, adds its tokens to the day's usage and settles the reservation. A
//! reservation whose process died (`kill -9`) is charged in full by the
//! next server that starts or admits a request on the directory.

use gpt2_db::{values, Db, DbError, Migration, PgTarget, Row, Sql, Tx};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// The database is out of reach now (a server answers 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Db(e) if e.is_unavailable())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What a key may do. `admin` is a scope of its own (metrics, unwatermarked
/// output), not a superset of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Generate,
    Score,
    Detect,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Generate, Scope::Score, Scope::Detect, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Generate => "generate",
            Scope::Score => "score",
            Scope::Detect => "detect",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Result<Scope> {
        Scope::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "unknown scope {name:?}; the scopes are generate, score, detect, admin"
                ))
            })
    }
}

/// A key as stored (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub purpose: String,
    pub scopes: Vec<Scope>,
    /// Model names, or `*` for every model the server has.
    pub models: Vec<String>,
    pub tokens_per_day: Option<u64>,
    pub requests_per_minute: Option<u32>,
    /// Unix seconds.
    pub created: i64,
    pub revoked: Option<i64>,
}

impl KeyInfo {
    pub fn has_scope(&self, s: Scope) -> bool {
        self.scopes.contains(&s)
    }

    pub fn allows_model(&self, name: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == name)
    }
}

/// The fields of a new key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub purpose: String,
    pub scopes: Vec<Scope>,
    pub models: Vec<String>,
    pub tokens_per_day: Option<u64>,
    pub requests_per_minute: Option<u32>,
}

/// One audited request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub time_ms: i64,
    pub key_id: Option<String>,
    pub endpoint: String,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub status: u16,
    pub latency_ms: f64,
    /// Anything unusual: the error message, or "unwatermarked".
    pub note: Option<String>,
}

/// The server's state database: SQLite (`keys.sqlite`) or PostgreSQL.
pub struct Store {
    db: Db,
}

/// How long a SQLite statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The store's schema, step by step. A file from before versions were kept
/// (user_version 0) has keys and audit only, which step 1 keeps; step 2
/// lets servers on other machines hold reservations (heartbeats) and, on
/// PostgreSQL, keeps the one watermark key every replica uses.
const MIGRATIONS: [Migration; 2] = [
    Migration {
        sqlite: "
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    purpose TEXT NOT NULL,
    scopes TEXT NOT NULL,
    models TEXT NOT NULL,
    tokens_per_day INTEGER,
    requests_per_minute INTEGER,
    created INTEGER NOT NULL,
    revoked INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    key_id TEXT,
    endpoint TEXT NOT NULL,
    model TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS audit_key_time ON audit (key_id, time_ms);
CREATE TABLE reservations (
    id INTEGER PRIMARY KEY,
    key_id TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX reservations_key_time ON reservations (key_id, created_ms);
CREATE INDEX reservations_open ON reservations (settled, key_id);
CREATE TABLE usage (
    key_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (key_id, day)
) WITHOUT ROWID;
INSERT INTO usage (key_id, day, tokens)
    SELECT key_id, time_ms / 86400000, SUM(prompt_tokens + completion_tokens)
    FROM audit WHERE key_id IS NOT NULL GROUP BY key_id, time_ms / 86400000;
",
        postgres: "
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    purpose TEXT NOT NULL,
    scopes TEXT NOT NULL,
    models TEXT NOT NULL,
    tokens_per_day BIGINT,
    requests_per_minute BIGINT,
    created BIGINT NOT NULL,
    revoked BIGINT
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    key_id TEXT,
    endpoint TEXT NOT NULL,
    model TEXT,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    status BIGINT NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    note TEXT
);
CREATE INDEX audit_key_time ON audit (key_id, time_ms);
CREATE TABLE reservations (
    id BIGSERIAL PRIMARY KEY,
    key_id TEXT NOT NULL,
    tokens BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    pid BIGINT NOT NULL,
    pid_start BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    settled BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX reservations_key_time ON reservations (key_id, created_ms);
CREATE INDEX reservations_open ON reservations (settled, key_id);
CREATE TABLE usage (
    key_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
);
",
    },
    Migration {
        sqlite: "
ALTER TABLE reservations ADD COLUMN host TEXT NOT NULL DEFAULT '';
CREATE TABLE holders (
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (host, pid, pid_start)
);
",
        postgres: "
ALTER TABLE reservations ADD COLUMN host TEXT NOT NULL DEFAULT '';
CREATE TABLE holders (
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    pid_start BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL,
    PRIMARY KEY (host, pid, pid_start)
);
CREATE TABLE watermark_key (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    json TEXT NOT NULL
);
",
    },
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;

/// Seconds from `now` (Unix ms) to the next 00:00 UTC, when daily quotas
/// reset; at least 1, for a `Retry-After`.
pub fn seconds_to_midnight(now: i64) -> u64 {
    ((DAY_MS - now.rem_euclid(DAY_MS)) / 1000).max(1) as u64
}

/// What a request asks of its key's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_day: Option<u64>,
}

/// The answer to an admission.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Admitted; the reservation to settle when the request ends.
    Reserved(i64),
    RateLimited {
        retry_after_s: u64,
    },
    /// The day's usage plus the reservations in flight.
    QuotaUsed {
        used: u64,
        retry_after_s: u64,
    },
}

/// The process that holds a reservation: its machine, its pid and its
/// start time (in clock ticks since boot, from `/proc`), so that a reused
/// pid is not mistaken for the holder.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub start: i64,
}

/// How long a server may go without a heartbeat before the reservations
/// it holds count as abandoned (it died on a machine no other server can
/// look into). Servers beat every [`HEARTBEAT_EVERY`].
pub const LEASE_MS: i64 = 60_000;
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

impl Holder {
    pub fn this_process() -> Holder {
        let pid = std::process::id();
        Holder {
            host: this_host(),
            pid,
            start: process_start(pid).unwrap_or(0),
        }
    }

    /// Whether the holder still runs, as far as this machine can see: on
    /// this machine, its pid and start time; elsewhere, its last heartbeat
    /// (`seen_ms`, else the reservation's time) within the lease. Where
    /// `/proc` says nothing, a local holder is taken to be alive: never
    /// charged twice.
    fn is_alive(&self, seen_ms: Option<i64>, created_ms: i64, now: i64) -> bool {
        if self.host == this_host() || self.host.is_empty() {
            if !Path::new("/proc/self/stat").exists() {
                return true;
            }
            return process_start(self.pid) == Some(self.start);
        }
        now - seen_ms.unwrap_or(created_ms) < LEASE_MS
    }
}

/// This machine's name for holders: `/etc/machine-id`, else the hostname.
fn this_host() -> String {
    ["/etc/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

fn process_start(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// SHA-256 of a key's secret, lowercase hex: all the database ever holds.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if missing) the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let name = path.display().to_string();
        let err = |e: rusqlite::Error| DbError::sql(&name, e.to_string());
        let conn = rusqlite::Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        gpt2_provenance::ledger::set_wal_mode(&conn, BUSY_TIMEOUT).map_err(err)?;
        // An audit row lost to a power cut is acceptable; an fsync per
        // request is not (the ledger, which must not lose a record, is FULL).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        Store::on(Db::sqlite(conn, name))
    }

    /// Opens the store in a PostgreSQL database, creating its tables.
    pub fn open_postgres(target: &PgTarget) -> Result<Store> {
        Store::on(Db::postgres(target)?)
    }

    fn on(mut db: Db) -> Result<Store> {
        db.migrate("store", &MIGRATIONS)?;
        Ok(Store { db })
    }

    pub fn db(&mut self) -> &mut Db {
        &mut self.db
    }

    /// The database's own check of its files (SQLite's `quick_check`):
    /// the problems it finds (none: empty). PostgreSQL keeps its own.
    pub fn quick_check(&self) -> Result<Vec<String>> {
        match self.db.sqlite_conn() {
            Some(c) => gpt2_provenance::ledger::sqlite_check(c, "quick_check")
                .map_err(|e| DbError::sql(self.db.name(), e.to_string()).into()),
            None => Ok(Vec::new()),
        }
    }

    /// Creates a key; returns its id and its secret, which is shown once and
    /// never stored.
    pub fn create_key(&mut self, k: &NewKey) -> Result<(String, String)> {
        if k.name.trim().is_empty() {
            return Err(StoreError::Invalid("the key needs a --name".into()));
        }
        if k.scopes.is_empty() {
            return Err(StoreError::Invalid(
                "the key needs at least one scope".into(),
            ));
        }
        if k.models.is_empty() || k.models.iter().any(|m| m.trim().is_empty()) {
            return Err(StoreError::Invalid(
                "the key needs at least one model name (or *)".into(),
            ));
        }
        let id = format!("key_{}", random_hex(6));
        let secret = format!("gpt2-{}", random_hex(32));
        let scopes: Vec<&str> = k.scopes.iter().map(|s| s.name()).collect();
        self.db.execute(
            "INSERT INTO keys (id, hash, name, purpose, scopes, models, tokens_per_day, \
             requests_per_minute, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            values![
                &id,
                hash_secret(&secret),
                &k.name,
                &k.purpose,
                scopes.join(","),
                k.models.join(","),
                k.tokens_per_day.map(|t| t.min(i64::MAX as u64) as i64),
                k.requests_per_minute,
                now_ms() / 1000
            ],
        )?;
        Ok((id, secret))
    }

    const KEY_COLUMNS: &'static str = "id, name, purpose, scopes, models, tokens_per_day, \
                                       requests_per_minute, created, revoked";

    fn key_from_row(r: &Row) -> Result<KeyInfo> {
        let scopes = r.text(3)?;
        let models = r.text(4)?;
        Ok(KeyInfo {
            id: r.text(0)?,
            name: r.text(1)?,
            purpose: r.text(2)?,
            // Written by create_key from parsed scopes; an unknown name (a
            // newer server's scope) grants nothing here.
            scopes: scopes
                .split(',')
                .filter_map(|s| Scope::parse(s).ok())
                .collect(),
            models: models.split(',').map(str::to_string).collect(),
            tokens_per_day: r.opt_int(5)?.map(|t| t.max(0) as u64),
            requests_per_minute: r.opt_int(6)?.map(|t| t.clamp(0, u32::MAX as i64) as u32),
            created: r.int(7)?,
            revoked: r.opt_int(8)?,
        })
    }

    /// The live (not revoked) key whose secret this is.
    pub fn authenticate(&mut self, secret: &str) -> Result<Option<KeyInfo>> {
        let sql = format!(
            "SELECT {} FROM keys WHERE hash = $1 AND revoked IS NULL",
            Self::KEY_COLUMNS
        );
        let row = self.db.query_opt(&sql, values![hash_secret(secret)])?;
        row.as_ref().map(Self::key_from_row).transpose()
    }

    pub fn list_keys(&mut self) -> Result<Vec<KeyInfo>> {
        let sql = format!(
            "SELECT {} FROM keys ORDER BY created, id",
            Self::KEY_COLUMNS
        );
        self.db
            .query(&sql, &[])?
            .iter()
            .map(Self::key_from_row)
            .collect()
    }

    /// Revokes a key; an unknown or already revoked id is an error.
    pub fn revoke(&mut self, id: &str) -> Result<()> {
        let n = self.db.execute(
            "UPDATE keys SET revoked = $2 WHERE id = $1 AND revoked IS NULL",
            values![id, now_ms() / 1000],
        )?;
        if n == 0 {
            return Err(StoreError::Invalid(format!(
                "{}: no live key {id:?} (see gpt2 keys list)",
                self.db.name()
            )));
        }
        Ok(())
    }

    /// Writes a request's audit row, adds its tokens to its key's usage
    /// for the day, and settles its reservation, in one transaction (so a
    /// request's tokens are never counted twice, nor missed, by another
    /// server's admission).
    pub fn settle(&mut self, e: &AuditEntry, reservation: Option<i64>) -> Result<()> {
        Ok(self.db.transaction(|tx| {
            if let Some(key) = &e.key_id {
                tx.lock(key)?;
            }
            insert_audit(tx, e)?;
            if let Some(key) = &e.key_id {
                add_usage(tx, key, e.time_ms, e.prompt_tokens + e.completion_tokens)?;
            }
            if let Some(id) = reservation {
                tx.execute(
                    "UPDATE reservations SET settled = 1 WHERE id = $1",
                    values![id],
                )?;
            }
            Ok(())
        })?)
    }

    /// Admits a request of at most `tokens` for `key_id` under `limits`,
    /// atomically against every process sharing this database: a request
    /// is refused once the minute's requests reach the rate, or once the
    /// day's usage and the reservations in flight reach the quota (so the
    /// quota is overshot by at most one request's own size).
    pub fn admit(
        &mut self,
        key_id: &str,
        endpoint: &str,
        tokens: u64,
        limits: Limits,
        holder: &Holder,
        now: i64,
    ) -> Result<Admission> {
        Ok(self.db.transaction(|tx| {
            tx.lock(key_id)?;
            tx.execute(
                "DELETE FROM reservations WHERE key_id = $1 AND settled = 1 AND created_ms < $2",
                values![key_id, now - MINUTE_MS],
            )?;
            if let Some(rpm) = limits.requests_per_minute {
                let r = tx.query_one(
                    "SELECT COUNT(*), MIN(created_ms) FROM reservations \
                     WHERE key_id = $1 AND created_ms > $2",
                    values![key_id, now - MINUTE_MS],
                )?;
                let (count, oldest) = (r.int(0)?, r.opt_int(1)?);
                if count >= rpm as i64 {
                    let wait = oldest.map(|t| t + MINUTE_MS - now).unwrap_or(MINUTE_MS);
                    return Ok(Admission::RateLimited {
                        retry_after_s: (wait.max(0) as u64).div_ceil(1000).max(1),
                    });
                }
            }
            if let Some(limit) = limits.tokens_per_day {
                let used = used_today(tx, key_id, now)?;
                if used >= limit {
                    return Ok(Admission::QuotaUsed {
                        used,
                        retry_after_s: seconds_to_midnight(now),
                    });
                }
            }
            let id = tx
                .query_one(
                    "INSERT INTO reservations (key_id, tokens, created_ms, pid, pid_start, \
                     endpoint, host) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    values![
                        key_id,
                        tokens.min(i64::MAX as u64) as i64,
                        now,
                        holder.pid,
                        holder.start,
                        endpoint,
                        &holder.host
                    ],
                )?
                .int(0)?;
            Ok(Admission::Reserved(id))
        })?)
    }

    /// Tokens a key has used today (UTC) plus what its requests in flight
    /// have reserved.
    pub fn used_today(&mut self, key_id: &str, now: i64) -> Result<u64> {
        Ok(used_today(&mut self.db, key_id, now)?)
    }

    /// Tells other servers that `holder` is alive (see [`LEASE_MS`]).
    pub fn heartbeat(&mut self, holder: &Holder, now: i64) -> Result<()> {
        self.db.execute(
            "INSERT INTO holders (host, pid, pid_start, seen_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (host, pid, pid_start) DO UPDATE SET seen_ms = excluded.seen_ms",
            values![&holder.host, holder.pid, holder.start, now],
        )?;
        Ok(())
    }

    /// Charges in full, with an audit row each, the open reservations whose
    /// process is gone (a server killed mid-request); returns how many.
    pub fn charge_abandoned(&mut self, now: i64) -> Result<usize> {
        Ok(self.db.transaction(|tx| {
            tx.lock("charge_abandoned")?;
            let open = tx.query(
                "SELECT r.id, r.key_id, r.tokens, r.created_ms, r.pid, r.pid_start, r.endpoint, \
                 r.host, h.seen_ms FROM reservations r LEFT JOIN holders h \
                 ON h.host = r.host AND h.pid = r.pid AND h.pid_start = r.pid_start \
                 WHERE r.settled = 0 ORDER BY r.id",
                &[],
            )?;
            let mut charged = 0;
            for r in open {
                let (id, key, tokens, created) = (r.int(0)?, r.text(1)?, r.int(2)?, r.int(3)?);
                let holder = Holder {
                    pid: r.int(4)?.clamp(0, u32::MAX as i64) as u32,
                    start: r.int(5)?,
                    host: r.text(7)?,
                };
                if holder.is_alive(r.opt_int(8)?, created, now) {
                    continue;
                }
                let entry = AuditEntry {
                    time_ms: created,
                    key_id: Some(key.clone()),
                    endpoint: r.text(6)?,
                    prompt_tokens: tokens.max(0) as u64,
                    status: ABANDONED,
                    note: Some(format!(
                        "the server process (pid {} on {}) stopped before this request \
                         finished; its reservation of {tokens} tokens is charged in full",
                        holder.pid, holder.host
                    )),
                    ..AuditEntry::default()
                };
                tx.lock(&key)?;
                insert_audit(tx, &entry)?;
                add_usage(tx, &key, created, tokens.max(0) as u64)?;
                tx.execute(
                    "UPDATE reservations SET settled = 1 WHERE id = $1",
                    values![id],
                )?;
                charged += 1;
            }
            tx.execute(
                "DELETE FROM holders WHERE seen_ms < $1",
                values![now - 10 * LEASE_MS],
            )?;
            // Admissions clear their own key's; this clears idle keys'.
            tx.execute(
                "DELETE FROM reservations WHERE settled = 1 AND created_ms < $1",
                values![now - MINUTE_MS],
            )?;
            Ok(charged)
        })?)
    }

    /// The newest audit entries first, optionally of one key.
    pub fn audit_log(&mut self, key_id: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let rows = self.db.query(
            "SELECT time_ms, key_id, endpoint, model, prompt_tokens, completion_tokens, \
             status, latency_ms, note FROM audit WHERE (CAST($1 AS TEXT) IS NULL OR key_id = $1) \
             ORDER BY id DESC LIMIT $2",
            values![key_id, limit.min(i64::MAX as usize)],
        )?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    time_ms: r.int(0)?,
                    key_id: r.opt_text(1)?,
                    endpoint: r.text(2)?,
                    model: r.opt_text(3)?,
                    prompt_tokens: r.int(4)?.max(0) as u64,
                    completion_tokens: r.int(5)?.max(0) as u64,
                    status: r.int(6)?.clamp(0, u16::MAX as i64) as u16,
                    latency_ms: r.real(7)?,
                    note: r.opt_text(8)?,
                })
            })
            .collect()
    }
}

/// The audit status of a request whose server died before it ended.
pub const ABANDONED: u16 = 599;

fn insert_audit(tx: &mut Tx<'_>, e: &AuditEntry) -> gpt2_db::Result<u64> {
    tx.execute(
        "INSERT INTO audit (time_ms, key_id, endpoint, model, prompt_tokens, \
         completion_tokens, status, latency_ms, note) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        values![
            e.time_ms,
            e.key_id.as_deref(),
            printable(&e.endpoint),
            e.model.as_deref().map(printable),
            e.prompt_tokens.min(i64::MAX as u64) as i64,
            e.completion_tokens.min(i64::MAX as u64) as i64,
            e.status,
            e.latency_ms,
            e.note.as_deref().map(printable)
        ],
    )
}

/// `s` with control characters written as `\u{..}` escapes. Audit fields
/// can carry what a client sent (a model name, a field in an error): a
/// U+0000 in them would make PostgreSQL refuse the row, and a terminal
/// escape would reach whoever reads `gpt2 audit`.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect()
}

fn add_usage(tx: &mut Tx<'_>, key_id: &str, time_ms: i64, tokens: u64) -> gpt2_db::Result<u64> {
    tx.execute(
        "INSERT INTO usage (key_id, day, tokens) VALUES ($1, $2, $3) \
         ON CONFLICT (key_id, day) DO UPDATE SET tokens = usage.tokens + excluded.tokens",
        values![
            key_id,
            time_ms.div_euclid(DAY_MS),
            tokens.min(i64::MAX as u64) as i64
        ],
    )
}

fn used_today(db: &mut impl Sql, key_id: &str, now: i64) -> gpt2_db::Result<u64> {
    let used = db
        .query_one(
            "SELECT COALESCE((SELECT tokens FROM usage WHERE key_id = $1 AND day = $2), 0) + \
             COALESCE((SELECT CAST(SUM(tokens) AS BIGINT) FROM reservations \
             WHERE settled = 0 AND key_id = $1), 0)",
            values![key_id, now.div_euclid(DAY_MS)],
        )?
        .int(0)?;
    Ok(used.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpt2_db::test_cluster::TestCluster;

    /// Opens another handle on one state, as another server process would.
    type Open<'a> = &'a (dyn Fn() -> Store + Sync);

    fn new_key(store: &mut Store) -> (String, String) {
        store
            .create_key(&NewKey {
                name: "org".into(),
                purpose: "research".into(),
                scopes: vec![Scope::Generate],
                models: vec!["default".into()],
                tokens_per_day: Some(100),
                requests_per_minute: None,
            })
            .unwrap()
    }

    fn revocation_is_immediate(open: Open) {
        let (mut store, mut other) = (open(), open());
        let (id, secret) = new_key(&mut store);
        let k = other.authenticate(&secret).unwrap().unwrap();
        assert_eq!(k.id, id);
        assert!(k.has_scope(Scope::Generate) && !k.has_scope(Scope::Admin));
        assert!(k.allows_model("default") && !k.allows_model("gpt2"));
        assert!(store.authenticate("gpt2-wrong").unwrap().is_none());
        store.revoke(&id).unwrap();
        assert!(other.authenticate(&secret).unwrap().is_none());
        assert!(store.revoke(&id).is_err());
    }

    fn audit_counts_tokens_per_key(open: Open) {
        let mut store = open();
        let odd = AuditEntry {
            key_id: Some("c".into()),
            endpoint: "/v1/completions".into(),
            model: Some("tiny\u{0}\u{1b}[2J".into()),
            note: Some("unknown field \"\u{0}\"".into()),
            ..AuditEntry::default()
        };
        store.settle(&odd, None).unwrap();
        let row = store.audit_log(Some("c"), 1).unwrap().remove(0);
        assert_eq!(row.model.as_deref(), Some("tiny\\u{0}\\u{1b}[2J"));
        assert_eq!(row.note.as_deref(), Some("unknown field \"\\u{0}\""));
        for (key, t) in [("a", 5), ("a", 7), ("b", 100)] {
            let row = AuditEntry {
                time_ms: 1000,
                key_id: Some(key.into()),
                endpoint: "/v1/completions".into(),
                prompt_tokens: t,
                completion_tokens: 1,
                status: 200,
                ..AuditEntry::default()
            };
            store.settle(&row, None).unwrap();
        }
        assert_eq!(store.used_today("a", 2000).unwrap(), 14);
        assert_eq!(store.used_today("a", DAY_MS + 1000).unwrap(), 0);
        assert_eq!(store.audit_log(Some("b"), 10).unwrap().len(), 1);
        assert_eq!(store.audit_log(None, 2).unwrap().len(), 2);
    }

    fn limits(rpm: Option<u32>, tpd: Option<u64>) -> Limits {
        Limits {
            requests_per_minute: rpm,
            tokens_per_day: tpd,
        }
    }

    fn two_handles_share_reservations_and_rates(open: Open) {
        let (mut a, mut b) = (open(), open());
        let me = Holder::this_process();
        let now = 10 * DAY_MS + 5;
        let q = limits(None, Some(100));
        let first = a.admit("k", "/v1/detect", 80, q, &me, now).unwrap();
        let Admission::Reserved(id) = first else {
            panic!("{first:?}")
        };
        // 80 reserved of 100: the other process admits one more, then no more.
        assert!(matches!(
            b.admit("k", "/v1/detect", 80, q, &me, now).unwrap(),
            Admission::Reserved(_)
        ));
        let refused = a.admit("k", "/v1/detect", 1, q, &me, now).unwrap();
        assert!(
            matches!(refused, Admission::QuotaUsed { used: 160, .. }),
            "{refused:?}"
        );
        // Settling moves the tokens actually used from reserved to used.
        let row = AuditEntry {
            time_ms: now,
            key_id: Some("k".into()),
            endpoint: "/v1/detect".into(),
            prompt_tokens: 30,
            status: 200,
            ..AuditEntry::default()
        };
        a.settle(&row, Some(id)).unwrap();
        assert_eq!(b.used_today("k", now).unwrap(), 30 + 80);
        let r = limits(Some(2), None);
        for _ in 0..2 {
            assert!(matches!(
                a.admit("r", "/", 0, r, &me, now).unwrap(),
                Admission::Reserved(_)
            ));
        }
        let limited = b.admit("r", "/", 0, r, &me, now + 1000).unwrap();
        assert_eq!(limited, Admission::RateLimited { retry_after_s: 59 });
        assert!(matches!(
            b.admit("r", "/", 0, r, &me, now + MINUTE_MS + 1).unwrap(),
            Admission::Reserved(_)
        ));
    }

    fn dead_holders_are_charged_in_full(open: Open) {
        let mut store = open();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = Holder {
            host: this_host(),
            pid: child.id(),
            start: process_start(child.id()).unwrap_or(1),
        };
        child.wait().unwrap();
        let now = now_ms();
        // A server on another machine: alive while it beats, then not.
        let far = Holder {
            host: "another-machine".into(),
            pid: 7,
            start: 1,
        };
        let q = limits(None, Some(1000));
        store
            .admit("k", "/v1/completions", 300, q, &dead, now)
            .unwrap();
        let me = Holder::this_process();
        store.admit("k", "/v1/completions", 5, q, &me, now).unwrap();
        store
            .admit("k", "/v1/completions", 40, q, &far, now)
            .unwrap();
        store.heartbeat(&far, now).unwrap();
        assert_eq!(store.charge_abandoned(now).unwrap(), 1);
        assert_eq!(store.charge_abandoned(now + LEASE_MS / 2).unwrap(), 0);
        // The live reservations stay open; the dead one became usage.
        assert_eq!(store.used_today("k", now).unwrap(), 345);
        let rows = store.audit_log(Some("k"), 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].status, rows[0].prompt_tokens), (ABANDONED, 300));
        // The far server stops beating: after the lease it is charged.
        assert_eq!(store.charge_abandoned(now + LEASE_MS + 1).unwrap(), 1);
        assert_eq!(store.audit_log(Some("k"), 10).unwrap().len(), 2);
    }

    fn opening_together_migrates_once(open: Open) {
        std::thread::scope(|s| {
            let opens: Vec<_> = (0..4).map(|_| s.spawn(|| drop(open()))).collect();
            for o in opens {
                o.join().unwrap();
            }
        });
    }

    const SCENARIOS: [fn(Open); 5] = [
        revocation_is_immediate,
        audit_counts_tokens_per_key,
        two_handles_share_reservations_and_rates,
        dead_holders_are_charged_in_full,
        opening_together_migrates_once,
    ];

    #[test]
    fn every_scenario_on_sqlite() {
        // A fresh file for each scenario's state, shared by its handles.
        for scenario in SCENARIOS {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keys.sqlite");
            scenario(&|| Store::open(&path).unwrap());
        }
    }

    #[test]
    fn every_scenario_on_postgres() {
        let pg = match TestCluster::start() {
            Ok(pg) => pg,
            Err(why) => return eprintln!("skipped: no PostgreSQL to test against: {why}"),
        };
        for (i, scenario) in SCENARIOS.into_iter().enumerate() {
            let target = PgTarget::parse(&pg.url(&format!("store{i}"))).unwrap();
            scenario(&|| Store::open_postgres(&target).unwrap());
        }
    }

    #[test]
    fn keys_are_stored_as_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("keys.sqlite")).unwrap();
        let (_, secret) = new_key(&mut store);
        let raw = std::fs::read(dir.path().join("keys.sqlite")).unwrap();
        let wal = std::fs::read(dir.path().join("keys.sqlite-wal")).unwrap_or_default();
        let needle = secret.as_bytes();
        for bytes in [&raw, &wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }

    #[test]
    fn an_old_database_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.sqlite");
        {
            // Version 0: keys and audit, and the audit table alone counted usage.
            let conn = rusqlite::Connection::open(&path).unwrap();
            let v0 = MIGRATIONS[0].sqlite;
            conn.execute_batch(&v0[..v0.find("CREATE TABLE reservations").unwrap()])
                .unwrap();
            conn.execute(
                "INSERT INTO audit (time_ms, key_id, endpoint, prompt_tokens, completion_tokens, \
                 status, latency_ms) VALUES (?1, 'k', '/v1/completions', 7, 3, 200, 1.0)",
                [5 * DAY_MS + 1],
            )
            .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.used_today("k", 5 * DAY_MS + 9).unwrap(), 10);
        drop(store);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 9")
            .unwrap();
        let e = Store::open(&path).err().unwrap().to_string();
        assert!(e.contains("schema version 9") && e.contains("newer"), "{e}");
    }
}
