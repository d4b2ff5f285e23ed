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

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("{0}")]
    Invalid(String),
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

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
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
";

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema this code writes (`PRAGMA user_version`): 0 had keys and
/// audit only; 1 adds reservations and the daily usage counter.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
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
";

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

/// The process that holds a reservation: its pid and its start time (in
/// clock ticks since boot, from `/proc`), so that a reused pid is not
/// mistaken for the holder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holder {
    pub pid: u32,
    pub start: i64,
}

impl Holder {
    pub fn this_process() -> Holder {
        let pid = std::process::id();
        Holder {
            pid,
            start: process_start(pid).unwrap_or(0),
        }
    }

    /// Whether the holder still runs. Where `/proc` says nothing (another
    /// OS), every holder is taken to be alive: never charged twice.
    fn is_alive(&self) -> bool {
        if !Path::new("/proc/self/stat").exists() {
            return true;
        }
        process_start(self.pid) == Some(self.start)
    }
}

/// Field 22 of `/proc/PID/stat`: the process's start time.
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
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let err = |source| StoreError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        gpt2_provenance::ledger::set_wal_mode(&conn, BUSY_TIMEOUT).map_err(err)?;
        // An audit row lost to a power cut is acceptable; an fsync per
        // request is not (the ledger, which must not lose a record, is FULL).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Brings the schema to [`SCHEMA_VERSION`]; a newer one is refused.
    fn migrate(&mut self) -> Result<()> {
        let err = self.err_fn();
        let path = self.path.display().to_string();
        // Under the write lock, so that servers starting together on one
        // directory migrate it once.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        tx.execute_batch(SCHEMA).map_err(&err)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(&err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid(format!(
                "{path}: schema version {version} was written by a newer gpt2 (this one knows {SCHEMA_VERSION})"
            )));
        }
        if version < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(&err)?;
            tx.pragma_update(None, "user_version", 1).map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    /// SQLite's `quick_check`: the problems it finds (none: empty).
    pub fn quick_check(&self) -> Result<Vec<String>> {
        gpt2_provenance::ledger::sqlite_check(&self.conn, "quick_check").map_err(self.err())
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// As `err`, owning the path (for use while the connection is borrowed
    /// mutably by a transaction).
    fn err_fn(&self) -> impl Fn(rusqlite::Error) -> StoreError {
        let path = self.path.display().to_string();
        move |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        }
    }

    /// Creates a key; returns its id and its secret, which is shown once and
    /// never stored.
    pub fn create_key(&self, k: &NewKey) -> Result<(String, String)> {
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
        self.conn
            .execute(
                "INSERT INTO keys (id, hash, name, purpose, scopes, models, tokens_per_day, \
                 requests_per_minute, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    id,
                    hash_secret(&secret),
                    k.name,
                    k.purpose,
                    scopes.join(","),
                    k.models.join(","),
                    k.tokens_per_day.map(|t| t as i64),
                    k.requests_per_minute,
                    now_ms() / 1000
                ],
            )
            .map_err(self.err())?;
        Ok((id, secret))
    }

    const KEY_COLUMNS: &'static str = "id, name, purpose, scopes, models, tokens_per_day, \
                                       requests_per_minute, created, revoked";

    fn key_from_row(r: &rusqlite::Row) -> rusqlite::Result<KeyInfo> {
        let scopes: String = r.get(3)?;
        let models: String = r.get(4)?;
        Ok(KeyInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            purpose: r.get(2)?,
            // Written by create_key from parsed scopes; an unknown name (a
            // newer server's scope) grants nothing here.
            scopes: scopes
                .split(',')
                .filter_map(|s| Scope::parse(s).ok())
                .collect(),
            models: models.split(',').map(str::to_string).collect(),
            tokens_per_day: r.get::<_, Option<i64>>(5)?.map(|t| t.max(0) as u64),
            requests_per_minute: r.get(6)?,
            created: r.get(7)?,
            revoked: r.get(8)?,
        })
    }

    /// The live (not revoked) key whose secret this is.
    pub fn authenticate(&self, secret: &str) -> Result<Option<KeyInfo>> {
        let sql = format!(
            "SELECT {} FROM keys WHERE hash = ?1 AND revoked IS NULL",
            Self::KEY_COLUMNS
        );
        self.conn
            .query_row(&sql, [hash_secret(secret)], Self::key_from_row)
            .optional()
            .map_err(self.err())
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let sql = format!(
            "SELECT {} FROM keys ORDER BY created, id",
            Self::KEY_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map([], Self::key_from_row)
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())?;
        Ok(rows)
    }

    /// Revokes a key; an unknown or already revoked id is an error.
    pub fn revoke(&self, id: &str) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE keys SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
                params![id, now_ms() / 1000],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(StoreError::Invalid(format!(
                "{}: no live key {id:?} (see gpt2 keys list)",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Writes a request's audit row, adds its tokens to its key's usage
    /// for the day, and settles its reservation, in one transaction (so a
    /// request's tokens are never counted twice, nor missed, by another
    /// server's admission).
    pub fn settle(&mut self, e: &AuditEntry, reservation: Option<i64>) -> Result<()> {
        let err = self.err_fn();
        let tx = self.conn.transaction().map_err(&err)?;
        insert_audit(&tx, e).map_err(&err)?;
        if let Some(key) = &e.key_id {
            add_usage(&tx, key, e.time_ms, e.prompt_tokens + e.completion_tokens).map_err(&err)?;
        }
        if let Some(id) = reservation {
            tx.prepare_cached("UPDATE reservations SET settled = 1 WHERE id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map_err(&err)?;
        }
        tx.commit().map_err(&err)
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
        holder: Holder,
        now: i64,
    ) -> Result<Admission> {
        let err = self.err_fn();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        tx.prepare_cached("DELETE FROM reservations WHERE settled = 1 AND created_ms < ?1")
            .and_then(|mut s| s.execute([now - MINUTE_MS]))
            .map_err(&err)?;
        if let Some(rpm) = limits.requests_per_minute {
            let (count, oldest): (i64, Option<i64>) = tx
                .prepare_cached(
                    "SELECT COUNT(*), MIN(created_ms) FROM reservations \
                     WHERE key_id = ?1 AND created_ms > ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![key_id, now - MINUTE_MS], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                })
                .map_err(&err)?;
            if count >= rpm as i64 {
                let wait = oldest.map(|t| t + MINUTE_MS - now).unwrap_or(MINUTE_MS);
                return Ok(Admission::RateLimited {
                    retry_after_s: (wait.max(0) as u64).div_ceil(1000).max(1),
                });
            }
        }
        if let Some(limit) = limits.tokens_per_day {
            let used = used_today(&tx, key_id, now).map_err(&err)?;
            if used >= limit {
                return Ok(Admission::QuotaUsed {
                    used,
                    retry_after_s: seconds_to_midnight(now),
                });
            }
        }
        tx.prepare_cached(
            "INSERT INTO reservations (key_id, tokens, created_ms, pid, pid_start, endpoint) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut s| {
            s.execute(params![
                key_id,
                tokens as i64,
                now,
                holder.pid,
                holder.start,
                endpoint
            ])
        })
        .map_err(&err)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(&err)?;
        Ok(Admission::Reserved(id))
    }

    /// Tokens a key has used today (UTC) plus what its requests in flight
    /// have reserved.
    pub fn used_today(&self, key_id: &str, now: i64) -> Result<u64> {
        used_today(&self.conn, key_id, now).map_err(self.err())
    }

    /// Charges in full, with an audit row each, the open reservations whose
    /// process is gone (a server killed mid-request); returns how many.
    pub fn charge_abandoned(&mut self) -> Result<usize> {
        let err = self.err_fn();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        let open: Vec<(i64, String, i64, i64, u32, i64, String)> = tx
            .prepare(
                "SELECT id, key_id, tokens, created_ms, pid, pid_start, endpoint \
                 FROM reservations WHERE settled = 0",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })?
                .collect()
            })
            .map_err(&err)?;
        let mut charged = 0;
        for (id, key, tokens, created, pid, start, endpoint) in open {
            if (Holder { pid, start }).is_alive() {
                continue;
            }
            let entry = AuditEntry {
                time_ms: created,
                key_id: Some(key.clone()),
                endpoint,
                prompt_tokens: tokens.max(0) as u64,
                status: ABANDONED,
                note: Some(format!(
                    "the server process (pid {pid}) stopped before this request finished; \
                     its reservation of {tokens} tokens is charged in full"
                )),
                ..AuditEntry::default()
            };
            insert_audit(&tx, &entry).map_err(&err)?;
            add_usage(&tx, &key, created, tokens.max(0) as u64).map_err(&err)?;
            tx.execute("UPDATE reservations SET settled = 1 WHERE id = ?1", [id])
                .map_err(&err)?;
            charged += 1;
        }
        tx.commit().map_err(&err)?;
        Ok(charged)
    }

    /// The newest audit entries first, optionally of one key.
    pub fn audit_log(&self, key_id: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT time_ms, key_id, endpoint, model, prompt_tokens, completion_tokens, \
                 status, latency_ms, note FROM audit WHERE (?1 IS NULL OR key_id = ?1) \
                 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![key_id, limit as i64], |r| {
                Ok(AuditEntry {
                    time_ms: r.get(0)?,
                    key_id: r.get(1)?,
                    endpoint: r.get(2)?,
                    model: r.get(3)?,
                    prompt_tokens: r.get::<_, i64>(4)?.max(0) as u64,
                    completion_tokens: r.get::<_, i64>(5)?.max(0) as u64,
                    status: r.get(6)?,
                    latency_ms: r.get(7)?,
                    note: r.get(8)?,
                })
            })
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())?;
        Ok(rows)
    }
}

/// The audit status of a request whose server died before it ended.
pub const ABANDONED: u16 = 599;

fn insert_audit(conn: &Connection, e: &AuditEntry) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO audit (time_ms, key_id, endpoint, model, prompt_tokens, \
         completion_tokens, status, latency_ms, note) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        e.time_ms,
        e.key_id,
        e.endpoint,
        e.model,
        e.prompt_tokens as i64,
        e.completion_tokens as i64,
        e.status,
        e.latency_ms,
        e.note
    ])
}

fn add_usage(
    conn: &Connection,
    key_id: &str,
    time_ms: i64,
    tokens: u64,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO usage (key_id, day, tokens) VALUES (?1, ?2, ?3) \
         ON CONFLICT (key_id, day) DO UPDATE SET tokens = tokens + excluded.tokens",
    )?
    .execute(params![key_id, time_ms.div_euclid(DAY_MS), tokens as i64])
}

fn used_today(conn: &Connection, key_id: &str, now: i64) -> rusqlite::Result<u64> {
    let used: i64 = conn
        .prepare_cached(
            "SELECT COALESCE((SELECT tokens FROM usage WHERE key_id = ?1 AND day = ?2), 0) + \
             COALESCE((SELECT SUM(tokens) FROM reservations WHERE settled = 0 AND key_id = ?1), 0)",
        )?
        .query_row(params![key_id, now.div_euclid(DAY_MS)], |r| r.get(0))?;
    Ok(used.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_as_hashes_and_revocation_is_immediate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("keys.sqlite")).unwrap();
        let (id, secret) = store
            .create_key(&NewKey {
                name: "org".into(),
                purpose: "research".into(),
                scopes: vec![Scope::Generate],
                models: vec!["default".into()],
                tokens_per_day: Some(100),
                requests_per_minute: None,
            })
            .unwrap();
        let raw = std::fs::read(dir.path().join("keys.sqlite")).unwrap();
        let wal = std::fs::read(dir.path().join("keys.sqlite-wal")).unwrap_or_default();
        let needle = secret.as_bytes();
        for bytes in [&raw, &wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
        let k = store.authenticate(&secret).unwrap().unwrap();
        assert_eq!(k.id, id);
        assert!(k.has_scope(Scope::Generate) && !k.has_scope(Scope::Admin));
        assert!(k.allows_model("default") && !k.allows_model("gpt2"));
        assert!(store.authenticate("gpt2-wrong").unwrap().is_none());
        store.revoke(&id).unwrap();
        assert!(store.authenticate(&secret).unwrap().is_none());
        assert!(store.revoke(&id).is_err());
    }

    #[test]
    fn audit_counts_tokens_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("keys.sqlite")).unwrap();
        for (key, t) in [("a", 5), ("a", 7), ("b", 100)] {
            store
                .settle(
                    &AuditEntry {
                        time_ms: 1000,
                        key_id: Some(key.into()),
                        endpoint: "/v1/completions".into(),
                        prompt_tokens: t,
                        completion_tokens: 1,
                        status: 200,
                        ..AuditEntry::default()
                    },
                    None,
                )
                .unwrap();
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

    #[test]
    fn two_handles_on_one_file_share_reservations_and_rates() {
        // Two Stores on one file stand for two server processes.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.sqlite");
        let (mut a, mut b) = (Store::open(&path).unwrap(), Store::open(&path).unwrap());
        let me = Holder::this_process();
        let now = 10 * DAY_MS + 5;
        let q = limits(None, Some(100));
        let first = a.admit("k", "/v1/detect", 80, q, me, now).unwrap();
        let Admission::Reserved(id) = first else {
            panic!("{first:?}")
        };
        // 80 reserved of 100: the other process admits one more, then no more.
        assert!(matches!(
            b.admit("k", "/v1/detect", 80, q, me, now).unwrap(),
            Admission::Reserved(_)
        ));
        let refused = a.admit("k", "/v1/detect", 1, q, me, now).unwrap();
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
                a.admit("r", "/", 0, r, me, now).unwrap(),
                Admission::Reserved(_)
            ));
        }
        let limited = b.admit("r", "/", 0, r, me, now + 1000).unwrap();
        assert_eq!(limited, Admission::RateLimited { retry_after_s: 59 });
        assert!(matches!(
            b.admit("r", "/", 0, r, me, now + MINUTE_MS + 1).unwrap(),
            Admission::Reserved(_)
        ));
    }

    #[test]
    fn a_dead_processs_reservations_are_charged_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("keys.sqlite")).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = Holder {
            pid: child.id(),
            start: process_start(child.id()).unwrap_or(1),
        };
        child.wait().unwrap();
        let now = now_ms();
        let q = limits(None, Some(1000));
        store
            .admit("k", "/v1/completions", 300, q, dead, now)
            .unwrap();
        store
            .admit("k", "/v1/completions", 5, q, Holder::this_process(), now)
            .unwrap();
        assert_eq!(store.charge_abandoned().unwrap(), 1);
        assert_eq!(store.charge_abandoned().unwrap(), 0);
        // The live reservation stays open; the dead one became usage.
        assert_eq!(store.used_today("k", now).unwrap(), 305);
        let rows = store.audit_log(Some("k"), 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].status, rows[0].prompt_tokens), (ABANDONED, 300));
    }

    #[test]
    fn an_old_database_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.sqlite");
        {
            // Version 0: the audit table alone counted usage.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO audit (time_ms, key_id, endpoint, prompt_tokens, completion_tokens, \
                 status, latency_ms) VALUES (?1, 'k', '/v1/completions', 7, 3, 200, 1.0)",
                [5 * DAY_MS + 1],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.used_today("k", 5 * DAY_MS + 9).unwrap(), 10);
        drop(store);
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 9")
            .unwrap();
        let e = Store::open(&path).err().unwrap().to_string();
        assert!(e.contains("schema version 9") && e.contains("newer"), "{e}");
    }

    #[test]
    fn servers_opening_an_old_database_together_migrate_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA)
            .unwrap();
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Store::open(&path).map(|_| ()))
            })
            .collect();
        for o in opens {
            o.join().unwrap().unwrap();
        }
    }
}
