//! The provenance ledger: one record per generation, searchable by the
//! exact text and by similarity, so a provider can answer "did we generate
//! this?" even after the text was lightly edited.
//!
//! A ledger is one SQLite file (WAL mode, `synchronous=FULL`: a record
//! acknowledged by [`Ledger::record`] survives `kill -9` and power loss).
//! Each record keeps the SHA-256 of the text, the set of its hashed word
//! 3-grams ([`shingle`]), a 128-entry MinHash signature and its 64 LSH band
//! keys ([`minhash`]), the watermark key id, the caller, the model and the
//! time; and, unless the ledger is hash-only, the text and its token ids.
//!
//! Lookup finds exact copies by hash, then near copies: records sharing a
//! band key with the query are candidates, and a candidate matches when the
//! Jaccard similarity of the two n-gram sets reaches the threshold
//! ([`DEFAULT_MIN_SCORE`]). Jaccard rather than containment: it is the
//! quantity MinHash estimates, so the candidate stage and the verdict
//! measure the same thing, and it is symmetric, so a short query made of
//! common phrases cannot score high against a long record just by being
//! contained in it.
//!
//! Hash-only mode (chosen when the ledger is created, stored in it, and kept
//! by every later open) stores no text and no token ids. The n-gram hashes
//! are unkeyed, so someone holding the file could still test whether a
//! guessed phrase occurs in some record; they cannot read the texts back.

mod minhash;
mod schema;
mod shingle;

pub use minhash::{BANDS, BAND_ROWS, NUM_HASHES};
pub use schema::SCHEMA_VERSION;
pub use shingle::NGRAM;

use gpt2_db::{values, Db, DbError, PgTarget, Sql, Value};
use rusqlite::Connection;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The Jaccard similarity at or above which a near copy is reported.
/// Measured on 200-token book passages (bench/ledger_bench.py): the 1st
/// percentile of the score after 20% random word substitutions is 0.22,
/// after 30% 0.12; the best-scoring LSH candidate of 2,000 unrelated human
/// passages (other books, WikiText) in a 100,000-record ledger scored
/// 0.022. 0.1 leaves a margin of over 2x below the edited copies and 4x
/// above unrelated text.
pub const DEFAULT_MIN_SCORE: f64 = 0.1;

/// What went wrong, naming the ledger file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: not a gpt2 ledger ({reason}); the file was left unchanged")]
    NotALedger { path: String, reason: String },
    #[error("{path}: {message}")]
    Incompatible { path: String, message: String },
    #[error("{path}: record {id}: {message}")]
    Corrupt {
        path: String,
        id: i64,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, LedgerError>;

/// One generation to record. The time is set by [`Ledger::record`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewRecord {
    pub tokens: Vec<u32>,
    pub text: String,
    pub watermark_key_id: Option<String>,
    pub caller: Option<String>,
    pub model: Option<String>,
}

/// A stored record. `text` and `tokens` are `None` in a hash-only ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub id: i64,
    /// Unix seconds.
    pub created: i64,
    /// SHA-256 of the text's UTF-8 bytes, lowercase hex.
    pub sha256: String,
    pub text: Option<String>,
    pub tokens: Option<Vec<u32>>,
    pub watermark_key_id: Option<String>,
    pub caller: Option<String>,
    pub model: Option<String>,
    /// How many distinct word n-grams the text has (0: only exact lookup
    /// can find it).
    pub ngrams: usize,
}

/// A record that matches a looked-up text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Match {
    pub record_id: i64,
    /// 1 for an exact copy, else the Jaccard similarity of the n-gram sets.
    pub score: f64,
    /// The SHA-256 of the text equals the record's.
    pub exact: bool,
}

/// What a ledger holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub path: String,
    pub schema_version: i64,
    pub hash_only: bool,
    pub records: i64,
    pub lsh_rows: i64,
    pub first_created: Option<i64>,
    pub last_created: Option<i64>,
    pub ngram: usize,
    pub hashes: usize,
    pub bands: usize,
    pub band_rows: usize,
    pub bytes: u64,
}

/// An open ledger: a SQLite file, or tables in a PostgreSQL database that
/// every server replica writes to.
pub struct Ledger {
    db: Db,
    /// The SQLite file (none on PostgreSQL).
    file: Option<PathBuf>,
    hash_only: bool,
}

impl LedgerError {
    /// The database is out of reach now (a server answers 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LedgerError::Db(e) if e.is_unavailable())
    }
}

/// Unix seconds now (0 if the clock is before 1970).
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// SHA-256 of the text, lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tokens_to_blob(tokens: &[u32]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
}

fn tokens_from_blob(bytes: &[u8]) -> Option<Vec<u32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Everything derived from a text that a record stores or a lookup needs.
struct Fingerprint {
    sha256: String,
    ngrams: Vec<u64>,
    /// `None` when the text has no n-grams.
    signature: Option<Vec<u64>>,
    band_keys: Vec<i64>,
}

impl Fingerprint {
    fn of(text: &str) -> Fingerprint {
        let ngrams = shingle::ngram_set(text);
        let signature = minhash::signature(&ngrams);
        let band_keys = signature
            .as_deref()
            .map(minhash::band_keys)
            .unwrap_or_default();
        Fingerprint {
            sha256: sha256_hex(text),
            ngrams,
            signature,
            band_keys,
        }
    }
}

/// SQLite's `PRAGMA quick_check` or `integrity_check` on `conn`: the
/// problems it reports, none (not SQLite's "ok") when the file is sound.
/// The server checks its own key database with it too.
pub fn sqlite_check(conn: &Connection, pragma: &str) -> rusqlite::Result<Vec<String>> {
    let lines = conn
        .prepare(&format!("PRAGMA {pragma}"))?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(if lines == ["ok"] { Vec::new() } else { lines })
}

/// Switches `conn` to WAL and returns the journal mode SQLite reports.
/// Leaving rollback mode needs the file to itself, and SQLite answers
/// SQLITE_BUSY at once, without its busy handler, when another process is
/// opening the same file: servers starting together on one state retry
/// here until `patience` runs out.
pub fn set_wal_mode(conn: &Connection, patience: std::time::Duration) -> rusqlite::Result<String> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// The SQL that finds the records sharing any of a query's band keys
/// (built once: every lookup runs it).
static CANDIDATES_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(candidates_sql);

fn candidates_sql() -> String {
    let marks: Vec<String> = (1..=BANDS).map(|i| format!("${i}")).collect();
    format!(
        "SELECT DISTINCT record_id FROM lsh WHERE key IN ({})",
        marks.join(", ")
    )
}

/// The SQL that indexes one record under its band keys, in one statement
/// (built once: every record runs it).
static BANDS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(bands_sql);

fn bands_sql() -> String {
    let rows: Vec<String> = (0..BANDS)
        .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    format!(
        "INSERT INTO lsh (key, record_id) VALUES {}",
        rows.join(", ")
    )
}

impl Ledger {
    /// Opens the ledger at `path`, creating an ordinary (text-keeping)
    /// ledger if the path does not exist. An existing hash-only ledger stays
    /// hash-only. Anything at `path` that is not a gpt2 ledger is an error,
    /// and is not modified.
    pub fn open(path: impl AsRef<Path>) -> Result<Ledger> {
        Ledger::open_with_mode(path.as_ref(), false)
    }

    /// Opens or creates a hash-only ledger: no text and no token ids are
    /// ever stored. An existing ledger that keeps texts is refused, since
    /// opening it this way could not keep the promise.
    pub fn open_hash_only(path: impl AsRef<Path>) -> Result<Ledger> {
        Ledger::open_with_mode(path.as_ref(), true)
    }

    /// [`Ledger::open_hash_only`] when `hash_only`, else [`Ledger::open`].
    pub fn open_with_mode(path: &Path, hash_only: bool) -> Result<Ledger> {
        let (db, meta) = schema::open(path, hash_only)?;
        let ledger = Ledger {
            db,
            file: Some(path.to_path_buf()),
            hash_only: meta.hash_only,
        };
        ledger.refuse_downgrade(hash_only)
    }

    /// Opens the ledger in a PostgreSQL database, creating its tables (as a
    /// hash-only ledger when `hash_only`) if there are none.
    pub fn open_postgres(target: &PgTarget, hash_only: bool) -> Result<Ledger> {
        let (db, meta) = schema::open_postgres(target, hash_only)?;
        let ledger = Ledger {
            db,
            file: None,
            hash_only: meta.hash_only,
        };
        ledger.refuse_downgrade(hash_only)
    }

    fn refuse_downgrade(self, hash_only: bool) -> Result<Ledger> {
        if hash_only && !self.hash_only {
            return Err(LedgerError::Incompatible {
                path: self.location().to_string(),
                message: "this ledger stores texts; hash-only mode is chosen when a ledger is \
                          created (use a new file or schema)"
                    .into(),
            });
        }
        Ok(self)
    }

    /// The file's path, or the database's URL without its password.
    pub fn location(&self) -> &str {
        self.db.name()
    }

    pub fn is_hash_only(&self) -> bool {
        self.hash_only
    }

    /// The connection, for copying a whole ledger (`gpt2 state copy`).
    pub fn db(&mut self) -> &mut Db {
        &mut self.db
    }

    fn corrupt(&self, id: i64, message: impl Into<String>) -> LedgerError {
        LedgerError::Corrupt {
            path: self.location().to_string(),
            id,
            message: message.into(),
        }
    }

    /// Records one generation in one transaction; returns its id. When this
    /// returns, the record is on disk.
    pub fn record(&mut self, r: &NewRecord) -> Result<i64> {
        let ids = self.record_batch(std::slice::from_ref(r))?;
        // invariant: record_batch returns one id per record given.
        Ok(*ids.first().expect("one id for one record"))
    }

    /// Records many generations in one transaction (bulk import): all of
    /// them are stored, or none.
    pub fn record_batch(&mut self, records: &[NewRecord]) -> Result<Vec<i64>> {
        let created = now();
        let hash_only = self.hash_only;
        let bands = BANDS_SQL.as_str();
        Ok(self.db.transaction(|tx| {
            let mut ids = Vec::with_capacity(records.len());
            for r in records {
                let fp = Fingerprint::of(&r.text);
                let (text, tokens) = if hash_only {
                    (None, None)
                } else {
                    (Some(r.text.as_str()), Some(tokens_to_blob(&r.tokens)))
                };
                let id = tx
                    .query_one(
                        "INSERT INTO records (created, sha256, text, tokens, watermark_key_id, \
                         caller, model, ngrams, minhash) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                        values![
                            created,
                            &fp.sha256,
                            text,
                            tokens,
                            r.watermark_key_id.as_deref(),
                            r.caller.as_deref(),
                            r.model.as_deref(),
                            shingle::to_blob(&fp.ngrams),
                            fp.signature.as_deref().map(shingle::to_blob)
                        ],
                    )?
                    .int(0)?;
                // A signature has exactly BANDS keys; a text without one none.
                if fp.band_keys.len() == BANDS {
                    let params: Vec<Value> = fp
                        .band_keys
                        .iter()
                        .flat_map(|k| [Value::Int(*k), Value::Int(id)])
                        .collect();
                    tx.execute(bands, &params)?;
                }
                ids.push(id);
            }
            Ok(ids)
        })?)
    }

    /// The records matching `text`, best first, at the default threshold.
    pub fn lookup(&mut self, text: &str) -> Result<Vec<Match>> {
        self.lookup_with(text, DEFAULT_MIN_SCORE)
    }

    /// The records matching `text`: exact copies (score 1), then near
    /// copies whose Jaccard similarity is at least `min_score` (0 to 1),
    /// sorted by score (exact first among equals, then by id).
    pub fn lookup_with(&mut self, text: &str, min_score: f64) -> Result<Vec<Match>> {
        if !(0.0..=1.0).contains(&min_score) {
            return Err(LedgerError::Invalid {
                path: self.location().to_string(),
                message: format!("the minimum score must be between 0 and 1, not {min_score}"),
            });
        }
        let fp = Fingerprint::of(text);
        let mut matches = self.exact_matches(&fp.sha256)?;
        if fp.signature.is_some() {
            let exact: std::collections::HashSet<i64> =
                matches.iter().map(|m| m.record_id).collect();
            for id in self.candidates(&fp.band_keys)? {
                if exact.contains(&id) {
                    continue;
                }
                let score = shingle::jaccard(&fp.ngrams, &self.ngrams_of(id)?);
                if score >= min_score && score > 0.0 {
                    matches.push(Match {
                        record_id: id,
                        score,
                        exact: false,
                    });
                }
            }
        }
        matches.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.exact.cmp(&a.exact))
                .then(a.record_id.cmp(&b.record_id))
        });
        Ok(matches)
    }

    fn exact_matches(&mut self, sha256: &str) -> Result<Vec<Match>> {
        let rows = self.db.query(
            "SELECT id FROM records WHERE sha256 = $1 ORDER BY id",
            values![sha256],
        )?;
        rows.iter()
            .map(|r| {
                Ok(Match {
                    record_id: r.int(0)?,
                    score: 1.0,
                    exact: true,
                })
            })
            .collect()
    }

    /// Ids of the records that share at least one band key.
    fn candidates(&mut self, keys: &[i64]) -> Result<Vec<i64>> {
        let params: Vec<Value> = keys.iter().map(|k| Value::Int(*k)).collect();
        let rows = self.db.query(&CANDIDATES_SQL, &params)?;
        Ok(rows
            .iter()
            .map(|r| r.int(0))
            .collect::<gpt2_db::Result<_>>()?)
    }

    fn ngrams_of(&mut self, id: i64) -> Result<Vec<u64>> {
        let blob = self
            .db
            .query_one("SELECT ngrams FROM records WHERE id = $1", values![id])?
            .blob(0)?;
        shingle::from_blob(&blob)
            .ok_or_else(|| self.corrupt(id, "the n-gram set is not a whole number of u64s"))
    }

    /// The record with this id, if there is one.
    pub fn get(&mut self, id: i64) -> Result<Option<Record>> {
        let Some(r) = self.db.query_opt(
            "SELECT created, sha256, text, tokens, watermark_key_id, caller, model, ngrams \
             FROM records WHERE id = $1",
            values![id],
        )?
        else {
            return Ok(None);
        };
        let tokens =
            match r.opt_blob(3)? {
                None => None,
                Some(b) => Some(tokens_from_blob(&b).ok_or_else(|| {
                    self.corrupt(id, "the token ids are not a whole number of u32s")
                })?),
            };
        Ok(Some(Record {
            id,
            created: r.int(0)?,
            sha256: r.text(1)?,
            text: r.opt_text(2)?,
            tokens,
            watermark_key_id: r.opt_text(4)?,
            caller: r.opt_text(5)?,
            model: r.opt_text(6)?,
            ngrams: r.blob(7)?.len() / 8,
        }))
    }

    /// Counts and parameters.
    pub fn stats(&mut self) -> Result<Stats> {
        let r = self.db.query_one(
            "SELECT count(*), min(created), max(created) FROM records",
            &[],
        )?;
        let lsh_rows = self.db.query_one("SELECT count(*) FROM lsh", &[])?.int(0)?;
        let bytes = match &self.file {
            Some(f) => std::fs::metadata(f).map(|m| m.len()).unwrap_or(0),
            None => self
                .db
                .query_one(
                    "SELECT pg_total_relation_size('records') + pg_total_relation_size('lsh')",
                    &[],
                )?
                .int(0)?
                .max(0) as u64,
        };
        Ok(Stats {
            path: self.location().to_string(),
            schema_version: SCHEMA_VERSION,
            hash_only: self.hash_only,
            records: r.int(0)?,
            lsh_rows,
            first_created: r.opt_int(1)?,
            last_created: r.opt_int(2)?,
            ngram: NGRAM,
            hashes: NUM_HASHES,
            bands: BANDS,
            band_rows: BAND_ROWS,
            bytes,
        })
    }

    /// Checks the whole ledger: SQLite's `integrity_check` (on a file),
    /// then every record against what its text implies (hash, n-grams,
    /// signature, band keys in the index). Returns the problems found;
    /// empty means consistent.
    pub fn check(&mut self) -> Result<Vec<String>> {
        let mut problems = self.integrity_problems()?;
        if !problems.is_empty() {
            return Ok(problems);
        }
        let mut after = 0i64;
        loop {
            let page = self.db.query(
                "SELECT id, sha256, text, ngrams, minhash FROM records WHERE id > $1 \
                 ORDER BY id LIMIT 1000",
                values![after],
            )?;
            let Some(last) = page.last() else { break };
            after = last.int(0)?;
            for row in &page {
                self.check_record(
                    row.int(0)?,
                    &row.text(1)?,
                    row.opt_text(2)?.as_deref(),
                    &row.blob(3)?,
                    row.opt_blob(4)?.as_deref(),
                    &mut problems,
                )?;
            }
        }
        Ok(problems)
    }

    /// SQLite's `quick_check` (the page structure, not the ledger's own
    /// invariants, which `verify` checks): its problems, none when sound.
    /// PostgreSQL checks its own pages.
    pub fn quick_check(&self) -> Result<Vec<String>> {
        match self.db.sqlite_conn() {
            Some(c) => sqlite_check(c, "quick_check").map_err(|e| self.sqlite_error(e)),
            None => Ok(Vec::new()),
        }
    }

    fn sqlite_error(&self, source: rusqlite::Error) -> LedgerError {
        LedgerError::Sqlite {
            path: self.location().to_string(),
            source,
        }
    }

    /// Sets this connection's page cache (KiB) on SQLite. Bulk imports
    /// want a large one (the default); a long-running server's
    /// connections a small one.
    pub fn set_cache_kib(&self, kib: i64) -> Result<()> {
        match self.db.sqlite_conn() {
            Some(c) => c
                .pragma_update(None, "cache_size", -kib.max(1))
                .map_err(|e| self.sqlite_error(e)),
            None => Ok(()),
        }
    }

    fn integrity_problems(&self) -> Result<Vec<String>> {
        let Some(c) = self.db.sqlite_conn() else {
            return Ok(Vec::new());
        };
        let lines = sqlite_check(c, "integrity_check").map_err(|e| self.sqlite_error(e))?;
        Ok(lines
            .into_iter()
            .map(|l| format!("integrity_check: {l}"))
            .collect())
    }

    /// One record's consistency: what is stored agrees with the text (when
    /// kept) and with itself, and its band keys are all in the index.
    fn check_record(
        &mut self,
        id: i64,
        sha: &str,
        text: Option<&str>,
        ngrams: &[u8],
        sig: Option<&[u8]>,
        problems: &mut Vec<String>,
    ) -> Result<()> {
        let Some(set) = shingle::from_blob(ngrams) else {
            problems.push(format!("record {id}: malformed n-gram set"));
            return Ok(());
        };
        if let Some(text) = text {
            let fp = Fingerprint::of(text);
            if fp.sha256 != sha {
                problems.push(format!("record {id}: SHA-256 does not match the text"));
            }
            if fp.ngrams != set {
                problems.push(format!("record {id}: n-gram set does not match the text"));
            }
        }
        let want = minhash::signature(&set);
        let have = sig.and_then(shingle::from_blob);
        if want != have {
            problems.push(format!(
                "record {id}: MinHash signature does not match its n-grams"
            ));
            return Ok(());
        }
        let keys = want.as_deref().map(minhash::band_keys).unwrap_or_default();
        for key in keys {
            let n = self
                .db
                .query_one(
                    "SELECT count(*) FROM lsh WHERE key = $1 AND record_id = $2",
                    values![key, id],
                )?
                .int(0)?;
            if n != 1 {
                problems.push(format!(
                    "record {id}: band key {key} missing from the index"
                ));
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
