//! The ledger's file: recognising one, creating one atomically, and the
//! connection settings that make an acknowledged record durable.
//!
//! A path either does not exist, or holds a complete ledger, or holds
//! something else that is refused and never written to: the identity check
//! reads the SQLite header bytes and then opens the file read-only, and a
//! new ledger is built under a temporary name and linked into place in one
//! step, so no crash can leave a half-created ledger behind.

use super::minhash::{BANDS, BAND_ROWS, NUM_HASHES};
use super::shingle::NGRAM;
use super::{LedgerError, Result};
use gpt2_db::{values, Db, Migration, PgTarget, Sql};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// `PRAGMA application_id` of a gpt2 ledger ("G2LG"): tells our files from
/// other SQLite databases without reading any table.
pub const APPLICATION_ID: i32 = 0x4732_4C47;

/// The schema this code reads and writes; stored in `meta` and in
/// `PRAGMA user_version`. Bump it when the tables, the n-gram
/// normalisation or the hashes change.
pub const SCHEMA_VERSION: i64 = 1;

/// The `format` value in `meta`.
const FORMAT: &str = "gpt2-ledger";

/// How long a writer waits for another process's transaction to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Page cache per connection (KiB, as SQLite's negative `cache_size`):
/// the LSH index takes random inserts, and a bulk import that keeps its
/// pages cached writes each one once per transaction instead of many times.
const CACHE_KIB: i64 = 128 * 1024;

/// The WAL is truncated to this size after a checkpoint (a bulk import can
/// grow it to hundreds of megabytes; a long-lived writer should not keep
/// that much disk).
const WAL_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

const TABLES: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE records (
    id INTEGER PRIMARY KEY,
    created INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    text TEXT,
    tokens BLOB,
    watermark_key_id TEXT,
    caller TEXT,
    model TEXT,
    ngrams BLOB NOT NULL,
    minhash BLOB
);
CREATE INDEX records_sha256 ON records (sha256);
CREATE TABLE lsh (
    key INTEGER NOT NULL,
    record_id INTEGER NOT NULL,
    PRIMARY KEY (key, record_id)
) WITHOUT ROWID;
";

/// What `meta` records about a ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub schema_version: i64,
    pub hash_only: bool,
}

/// The parameters a ledger's signatures and keys were made with; a ledger
/// made with others cannot be searched by this code.
fn parameters() -> [(&'static str, String); 4] {
    [
        ("ngram", NGRAM.to_string()),
        ("hashes", NUM_HASHES.to_string()),
        ("bands", BANDS.to_string()),
        ("band_rows", BAND_ROWS.to_string()),
    ]
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
    move |source| LedgerError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

fn not_a_ledger(path: &Path, reason: impl Into<String>) -> LedgerError {
    LedgerError::NotALedger {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn incompatible(name: &str, message: impl Into<String>) -> LedgerError {
    LedgerError::Incompatible {
        path: name.to_string(),
        message: message.into(),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Opens the ledger at `path` for reading and writing, creating it (with
/// `hash_only` as its mode) when the path does not exist. Returns the
/// connection and what `meta` says.
pub fn open(path: &Path, hash_only: bool) -> Result<(Db, Meta)> {
    if !path.exists() {
        create(path, hash_only)?;
    }
    identify(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path))?;
    configure(&conn, path)?;
    let mut db = Db::sqlite(conn, path.display().to_string());
    let meta = read_meta(&mut db)?;
    Ok((db, meta))
}

/// The ledger's tables on PostgreSQL: SQLite's, in PostgreSQL's types.
const POSTGRES_TABLES: [Migration; 1] = [Migration {
    sqlite: "",
    postgres: "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records (
    id BIGSERIAL PRIMARY KEY,
    created BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    -- UTF-8 bytes: a generation may hold U+0000, which TEXT refuses.
    text BYTEA,
    tokens BYTEA,
    watermark_key_id TEXT,
    caller TEXT,
    model TEXT,
    ngrams BYTEA NOT NULL,
    minhash BYTEA
);
CREATE INDEX records_sha256 ON records (sha256);
CREATE TABLE lsh (
    key BIGINT NOT NULL,
    record_id BIGINT NOT NULL,
    PRIMARY KEY (key, record_id)
);
",
}];

/// Opens (creating, as hash-only when `hash_only`, if new) the ledger in a
/// PostgreSQL database; returns the connection and what `meta` says.
pub fn open_postgres(target: &PgTarget, hash_only: bool) -> Result<(Db, Meta)> {
    let mut db = Db::postgres(target)?;
    db.migrate("ledger", &POSTGRES_TABLES)?;
    db.transaction(|tx| {
        tx.lock("ledger meta")?;
        for (k, v) in meta_rows(hash_only) {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                values![k, v],
            )?;
        }
        Ok(())
    })?;
    let meta = read_meta(&mut db)?;
    Ok((db, meta))
}

/// What a new ledger's `meta` holds.
fn meta_rows(hash_only: bool) -> Vec<(&'static str, String)> {
    let mut rows: Vec<(&str, String)> = vec![
        ("format", FORMAT.to_string()),
        ("schema_version", SCHEMA_VERSION.to_string()),
        ("hash_only", if hash_only { "1" } else { "0" }.to_string()),
        ("created", super::now().to_string()),
    ];
    rows.extend(parameters());
    rows
}

/// Refuses anything at `path` that is not a gpt2 ledger, without writing
/// to it. The 100-byte SQLite header holds the magic string and (at offset
/// 68, big-endian) the application id, so a foreign file is refused from
/// its bytes alone, before SQLite opens it (opening a WAL-mode database
/// creates files beside it). Only a file with our id is opened, read-only,
/// to check the `meta` table.
fn identify(path: &Path) -> Result<()> {
    let mut header = [0u8; 100];
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let n = read_up_to(&mut f, &mut header).map_err(io_err(path))?;
    if n == 0 {
        return Err(not_a_ledger(path, "the file is empty"));
    }
    if n < header.len() || &header[..16] != b"SQLite format 3\0" {
        return Err(not_a_ledger(path, "not a SQLite database"));
    }
    let app = i32::from_be_bytes([header[68], header[69], header[70], header[71]]);
    if app != APPLICATION_ID {
        return Err(not_a_ledger(
            path,
            "a SQLite database without the gpt2 ledger application id",
        ));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err(path))?;
    let format = meta_value(&conn, "format").map_err(|e| {
        not_a_ledger(
            path,
            format!("the gpt2 ledger id but no readable meta table: {e}"),
        )
    })?;
    if format.as_deref() != Some(FORMAT) {
        return Err(not_a_ledger(path, "its meta table names another format"));
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn meta_value(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// Per-connection settings: WAL (readers never block the writer, and a
/// crash mid-transaction leaves only an uncommitted tail that SQLite
/// ignores), `synchronous=FULL` (the WAL is fsynced at every commit, so an
/// acknowledged record survives power loss, not just a process crash), a
/// busy timeout for concurrent writers, and a page cache.
fn configure(conn: &Connection, path: &Path) -> Result<()> {
    let err = sqlite_err(path);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    let mode = super::set_wal_mode(conn, BUSY_TIMEOUT).map_err(&err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(incompatible(
            &path.display().to_string(),
            format!("SQLite refused WAL mode (journal mode is {mode})"),
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(&err)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(&err)?;
    // A record's band keys go in as one multi-row INSERT, which keeps a
    // statement journal: in memory, not as a temporary file's writes.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(&err)?;
    conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES)
        .map_err(&err)?;
    Ok(())
}

/// Reads `meta` and refuses a ledger this code cannot search: a newer
/// schema, or signatures made with other parameters.
fn read_meta(db: &mut Db) -> Result<Meta> {
    let name = db.name().to_string();
    let path = name.as_str();
    let mut get = |key: &str| -> Result<String> {
        db.query_opt("SELECT value FROM meta WHERE key = $1", values![key])?
            .map(|r| r.text(0))
            .transpose()?
            .ok_or_else(|| incompatible(path, format!("meta has no {key:?} entry")))
    };
    let version = get("schema_version")?;
    let schema_version: i64 = version.parse().map_err(|_| {
        incompatible(
            path,
            format!("meta schema_version {version:?} is not a number"),
        )
    })?;
    if schema_version != SCHEMA_VERSION {
        return Err(incompatible(
            path,
            format!(
                "ledger schema version {schema_version}; this gpt2 reads version {SCHEMA_VERSION}"
            ),
        ));
    }
    for (key, want) in parameters() {
        let have = get(key)?;
        if have != want {
            return Err(incompatible(
                path,
                format!("made with {key} = {have}; this gpt2 uses {want}"),
            ));
        }
    }
    let hash_only = match get("hash_only")?.as_str() {
        "0" => false,
        "1" => true,
        other => {
            return Err(incompatible(
                path,
                format!("meta hash_only {other:?} is neither 0 nor 1"),
            ))
        }
    };
    Ok(Meta {
        schema_version,
        hash_only,
    })
}

/// Builds a new ledger under a temporary name beside `path` and links it
/// into place, which fails rather than overwrite a file that appeared in
/// the meantime (another process creating the same ledger wins, and its
/// ledger is used).
fn create(path: &Path, hash_only: bool) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(LedgerError::Invalid {
                path: path.display().to_string(),
                message: format!(
                    "cannot create the ledger: {} is not a directory",
                    dir.display()
                ),
            });
        }
    }
    let tmp = temp_name(path);
    let built = build(&tmp, hash_only);
    let linked = built.and_then(|()| link_into_place(&tmp, path));
    remove_quietly(&tmp);
    linked
}

fn temp_name(path: &Path) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".creating-{}-{nanos}", std::process::id()));
    name.into()
}

/// Writes the schema and `meta` into a fresh file at `tmp`.
fn build(tmp: &Path, hash_only: bool) -> Result<()> {
    let err = sqlite_err(tmp);
    let mut conn = Connection::open_with_flags(
        tmp,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&err)?;
    configure(&conn, tmp)?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(&err)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(&err)?;
    let tx = conn.transaction().map_err(&err)?;
    tx.execute_batch(TABLES).map_err(&err)?;
    for (k, v) in &meta_rows(hash_only) {
        tx.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", (k, v))
            .map_err(&err)?;
    }
    tx.commit().map_err(&err)?;
    // Closing checkpoints the WAL into the main file and removes it, so the
    // one file linked into place is the whole ledger.
    conn.close().map_err(|(_, e)| err(e))?;
    Ok(())
}

/// Links `tmp` to `path` unless `path` exists by now, then makes the new
/// directory entry durable.
fn link_into_place(tmp: &Path, path: &Path) -> Result<()> {
    match std::fs::hard_link(tmp, path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        // Filesystems without hard links: a rename, checked just before.
        Err(_) if !path.exists() => std::fs::rename(tmp, path).map_err(io_err(path))?,
        Err(_) => return Ok(()),
    }
    sync_parent(path)
}

#[cfg(unix)]
fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err(parent))
}

#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> Result<()> {
    Ok(())
}

fn remove_quietly(tmp: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = tmp.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(name));
    }
}
