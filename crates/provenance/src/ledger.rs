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

use rusqlite::{params_from_iter, Connection, OptionalExtension, TransactionBehavior};
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

/// An open ledger.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    hash_only: bool,
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

/// The SQL that finds the records sharing any of a query's band keys.
fn candidates_sql() -> String {
    let marks = vec!["?"; BANDS].join(", ");
    format!("SELECT DISTINCT record_id FROM lsh WHERE key IN ({marks})")
}

impl Ledger {
    /// Opens the ledger at `path`, creating an ordinary (text-keeping)
    /// ledger if the path does not exist. An existing hash-only ledger stays
    /// hash-only. Anything at `path` that is not a gpt2 ledger is an error,
    /// and is not modified.
    pub fn open(path: impl AsRef<Path>) -> Result<Ledger> {
        let path = path.as_ref();
        let (conn, meta) = schema::open(path, false)?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            hash_only: meta.hash_only,
        })
    }

    /// Opens or creates a hash-only ledger: no text and no token ids are
    /// ever stored. An existing ledger that keeps texts is refused, since
    /// opening it this way could not keep the promise.
    pub fn open_hash_only(path: impl AsRef<Path>) -> Result<Ledger> {
        let path = path.as_ref();
        let (conn, meta) = schema::open(path, true)?;
        if !meta.hash_only {
            return Err(LedgerError::Incompatible {
                path: path.display().to_string(),
                message: "this ledger stores texts; hash-only mode is chosen when a ledger is \
                          created (use a new file)"
                    .into(),
            });
        }
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            hash_only: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_hash_only(&self) -> bool {
        self.hash_only
    }

    fn sqlite(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        move |source| LedgerError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn corrupt(&self, id: i64, message: impl Into<String>) -> LedgerError {
        LedgerError::Corrupt {
            path: self.path.display().to_string(),
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
        let path = self.path.display().to_string();
        let err = |source| LedgerError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let mut ids = Vec::with_capacity(records.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (created, sha256, text, tokens, watermark_key_id, \
                     caller, model, ngrams, minhash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(err)?;
            let mut band = tx
                .prepare_cached("INSERT INTO lsh (key, record_id) VALUES (?1, ?2)")
                .map_err(err)?;
            for r in records {
                let fp = Fingerprint::of(&r.text);
                let (text, tokens) = if hash_only {
                    (None, None)
                } else {
                    (Some(r.text.as_str()), Some(tokens_to_blob(&r.tokens)))
                };
                insert
                    .execute((
                        created,
                        &fp.sha256,
                        text,
                        tokens,
                        r.watermark_key_id.as_deref(),
                        r.caller.as_deref(),
                        r.model.as_deref(),
                        shingle::to_blob(&fp.ngrams),
                        fp.signature.as_deref().map(shingle::to_blob),
                    ))
                    .map_err(err)?;
                let id = tx.last_insert_rowid();
                for key in &fp.band_keys {
                    band.execute((key, id)).map_err(err)?;
                }
                ids.push(id);
            }
        }
        tx.commit().map_err(err)?;
        Ok(ids)
    }

    /// The records matching `text`, best first, at the default threshold.
    pub fn lookup(&self, text: &str) -> Result<Vec<Match>> {
        self.lookup_with(text, DEFAULT_MIN_SCORE)
    }

    /// The records matching `text`: exact copies (score 1), then near
    /// copies whose Jaccard similarity is at least `min_score` (0 to 1),
    /// sorted by score (exact first among equals, then by id).
    pub fn lookup_with(&self, text: &str, min_score: f64) -> Result<Vec<Match>> {
        if !(0.0..=1.0).contains(&min_score) {
            return Err(LedgerError::Invalid {
                path: self.path.display().to_string(),
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

    fn exact_matches(&self, sha256: &str) -> Result<Vec<Match>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id FROM records WHERE sha256 = ?1 ORDER BY id")
            .map_err(self.sqlite())?;
        let ids = st
            .query_map([sha256], |r| r.get::<_, i64>(0))
            .map_err(self.sqlite())?
            .collect::<rusqlite::Result<Vec<i64>>>()
            .map_err(self.sqlite())?;
        Ok(ids
            .into_iter()
            .map(|record_id| Match {
                record_id,
                score: 1.0,
                exact: true,
            })
            .collect())
    }

    /// Ids of the records that share at least one band key.
    fn candidates(&self, keys: &[i64]) -> Result<Vec<i64>> {
        let mut st = self
            .conn
            .prepare_cached(&candidates_sql())
            .map_err(self.sqlite())?;
        let ids = st
            .query_map(params_from_iter(keys), |r| r.get::<_, i64>(0))
            .map_err(self.sqlite())?
            .collect::<rusqlite::Result<Vec<i64>>>()
            .map_err(self.sqlite())?;
        Ok(ids)
    }

    fn ngrams_of(&self, id: i64) -> Result<Vec<u64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT ngrams FROM records WHERE id = ?1")
            .map_err(self.sqlite())?;
        let blob: Vec<u8> = st.query_row([id], |r| r.get(0)).map_err(self.sqlite())?;
        shingle::from_blob(&blob)
            .ok_or_else(|| self.corrupt(id, "the n-gram set is not a whole number of u64s"))
    }

    /// The record with this id, if there is one.
    pub fn get(&self, id: i64) -> Result<Option<Record>> {
        let row = self
            .conn
            .query_row(
                "SELECT created, sha256, text, tokens, watermark_key_id, caller, model, ngrams \
                 FROM records WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Vec<u8>>(7)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sqlite())?;
        let Some((created, sha256, text, tokens, watermark_key_id, caller, model, ngrams)) = row
        else {
            return Ok(None);
        };
        let tokens =
            match tokens {
                None => None,
                Some(b) => Some(tokens_from_blob(&b).ok_or_else(|| {
                    self.corrupt(id, "the token ids are not a whole number of u32s")
                })?),
            };
        Ok(Some(Record {
            id,
            created,
            sha256,
            text,
            tokens,
            watermark_key_id,
            caller,
            model,
            ngrams: ngrams.len() / 8,
        }))
    }

    /// Counts and parameters.
    pub fn stats(&self) -> Result<Stats> {
        let (records, first_created, last_created) = self
            .conn
            .query_row(
                "SELECT count(*), min(created), max(created) FROM records",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(self.sqlite())?;
        let lsh_rows = self
            .conn
            .query_row("SELECT count(*) FROM lsh", [], |r| r.get(0))
            .map_err(self.sqlite())?;
        let bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        Ok(Stats {
            path: self.path.display().to_string(),
            schema_version: SCHEMA_VERSION,
            hash_only: self.hash_only,
            records,
            lsh_rows,
            first_created,
            last_created,
            ngram: NGRAM,
            hashes: NUM_HASHES,
            bands: BANDS,
            band_rows: BAND_ROWS,
            bytes,
        })
    }

    /// Checks the whole file: SQLite's `integrity_check`, then every record
    /// against what its text implies (hash, n-grams, signature, band keys in
    /// the index). Returns the problems found; empty means consistent.
    pub fn check(&self) -> Result<Vec<String>> {
        let mut problems = self.integrity_problems()?;
        if !problems.is_empty() {
            return Ok(problems);
        }
        let mut st = self
            .conn
            .prepare("SELECT id, sha256, text, ngrams, minhash FROM records ORDER BY id")
            .map_err(self.sqlite())?;
        let mut rows = st.query([]).map_err(self.sqlite())?;
        while let Some(row) = rows.next().map_err(self.sqlite())? {
            let id: i64 = row.get(0).map_err(self.sqlite())?;
            let sha: String = row.get(1).map_err(self.sqlite())?;
            let text: Option<String> = row.get(2).map_err(self.sqlite())?;
            let ngrams: Vec<u8> = row.get(3).map_err(self.sqlite())?;
            let sig: Option<Vec<u8>> = row.get(4).map_err(self.sqlite())?;
            self.check_record(
                id,
                &sha,
                text.as_deref(),
                &ngrams,
                sig.as_deref(),
                &mut problems,
            )?;
        }
        Ok(problems)
    }

    /// SQLite's `quick_check` (the page structure, not the ledger's own
    /// invariants, which `verify` checks): its problems, none when sound.
    pub fn quick_check(&self) -> Result<Vec<String>> {
        sqlite_check(&self.conn, "quick_check").map_err(self.sqlite())
    }

    /// Sets this connection's page cache (KiB). Bulk imports want a large
    /// one (the default); a long-running server's connections a small one.
    pub fn set_cache_kib(&self, kib: i64) -> Result<()> {
        self.conn
            .pragma_update(None, "cache_size", -kib.max(1))
            .map_err(self.sqlite())
    }

    fn integrity_problems(&self) -> Result<Vec<String>> {
        let lines = sqlite_check(&self.conn, "integrity_check").map_err(self.sqlite())?;
        Ok(lines
            .into_iter()
            .map(|l| format!("integrity_check: {l}"))
            .collect())
    }

    /// One record's consistency: what is stored agrees with the text (when
    /// kept) and with itself, and its band keys are all in the index.
    fn check_record(
        &self,
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
        let mut st = self
            .conn
            .prepare_cached("SELECT count(*) FROM lsh WHERE key = ?1 AND record_id = ?2")
            .map_err(self.sqlite())?;
        for key in keys {
            let n: i64 = st
                .query_row((key, id), |r| r.get(0))
                .map_err(self.sqlite())?;
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
