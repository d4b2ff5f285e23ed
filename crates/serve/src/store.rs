//! The server's own database (`keys.sqlite` in the state directory): API
//! keys, stored only as SHA-256 hashes of the secret, and the audit log of
//! every request.
//!
//! The server and the `gpt2 keys` / `gpt2 audit` commands open the same
//! file (SQLite in WAL mode, so readers never block the writer); the server
//! reads a key's row on every request, which is what makes a revocation
//! effective on the next request.

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
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .map_err(err)?;
        // An audit row lost to a power cut is acceptable; an fsync per
        // request is not (the ledger, which must not lose a record, is FULL).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.display().to_string(),
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

    pub fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit (time_ms, key_id, endpoint, model, prompt_tokens, \
                 completion_tokens, status, latency_ms, note) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut s| {
                s.execute(params![
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
            })
            .map_err(self.err())?;
        Ok(())
    }

    /// Tokens (prompt and completion) a key has used since `since_ms`.
    pub fn tokens_used_since(&self, key_id: &str, since_ms: i64) -> Result<u64> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM audit \
                 WHERE key_id = ?1 AND time_ms >= ?2",
            )
            .and_then(|mut s| s.query_row(params![key_id, since_ms], |r| r.get(0)))
            .map_err(self.err())?;
        Ok(n.max(0) as u64)
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
        let store = Store::open(&dir.path().join("keys.sqlite")).unwrap();
        for (key, t) in [("a", 5), ("a", 7), ("b", 100)] {
            store
                .audit(&AuditEntry {
                    time_ms: 1000,
                    key_id: Some(key.into()),
                    endpoint: "/v1/completions".into(),
                    prompt_tokens: t,
                    completion_tokens: 1,
                    status: 200,
                    ..AuditEntry::default()
                })
                .unwrap();
        }
        assert_eq!(store.tokens_used_since("a", 0).unwrap(), 14);
        assert_eq!(store.tokens_used_since("a", 2000).unwrap(), 0);
        assert_eq!(store.audit_log(Some("b"), 10).unwrap().len(), 1);
        assert_eq!(store.audit_log(None, 2).unwrap().len(), 2);
    }
}
