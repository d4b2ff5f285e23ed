//! Moving a whole state between a directory and PostgreSQL (either way):
//! keys, quotas, audit, reservations, the ledger and the watermark key,
//! each table copied in key order in one transaction and then read back
//! from the target and compared, row count and SHA-256, with the source.

use crate::state::{State, StateError};
use gpt2_db::copy::{self, Table, TableDigest};
use gpt2_db::{Db, Sql};

/// The store's tables, in the store's schema.
const STORE_TABLES: [Table; 5] = [
    Table {
        name: "keys",
        columns: &[
            "id",
            "hash",
            "name",
            "purpose",
            "scopes",
            "models",
            "tokens_per_day",
            "requests_per_minute",
            "created",
            "revoked",
        ],
        key: &["id"],
    },
    Table {
        name: "audit",
        columns: &[
            "id",
            "time_ms",
            "key_id",
            "endpoint",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "status",
            "latency_ms",
            "note",
        ],
        key: &["id"],
    },
    Table {
        name: "usage",
        columns: &["key_id", "day", "tokens"],
        key: &["key_id", "day"],
    },
    Table {
        name: "reservations",
        columns: &[
            "id",
            "key_id",
            "tokens",
            "created_ms",
            "pid",
            "pid_start",
            "endpoint",
            "settled",
            "host",
        ],
        key: &["id"],
    },
    Table {
        name: "holders",
        columns: &["host", "pid", "pid_start", "seen_ms"],
        key: &["host", "pid", "pid_start"],
    },
];

/// The ledger's tables (its `meta` is written by opening the target with
/// the source's mode).
const LEDGER_TABLES: [Table; 2] = [
    Table {
        name: "records",
        columns: &[
            "id",
            "created",
            "sha256",
            "text",
            "tokens",
            "watermark_key_id",
            "caller",
            "model",
            "ngrams",
            "minhash",
        ],
        key: &["id"],
    },
    Table {
        name: "lsh",
        columns: &["key", "record_id"],
        key: &["key", "record_id"],
    },
];

/// The tables whose ids PostgreSQL hands out from a sequence.
const SERIAL_IDS: [&str; 3] = ["audit", "reservations", "records"];

/// One table's copy, verified.
#[derive(Debug, Clone)]
pub struct Copied {
    pub table: &'static str,
    pub digest: TableDigest,
}

fn invalid(to: &State, message: impl Into<String>) -> StateError {
    StateError::Io {
        path: to.describe(),
        message: message.into(),
    }
}

/// Copies the whole state `from` into `to`, which must hold no keys,
/// audit rows or records yet; returns each table's verified row count and
/// digest. The source is only read.
pub fn copy_state(from: &State, to: &State) -> Result<Vec<Copied>, StateError> {
    let mut source_store = from.store()?;
    let mut source_ledger = from.ledger()?;
    let key = from.existing_watermark_key()?;
    let mut target_store = to.store()?;
    let mut target_ledger = to.ledger_with_mode(source_ledger.is_hash_only())?;
    let held = count_rows(target_store.db(), &["keys", "audit", "usage"])?
        + count_rows(target_ledger.db(), &["records"])?;
    if held > 0 {
        return Err(invalid(
            to,
            format!("the target already holds {held} keys, audit rows or records; a copy goes into an empty state, and nothing was written"),
        ));
    }
    if let Some(key) = &key {
        to.install_watermark_key(key)?;
    }
    let mut copied = copy_tables(source_store.db(), target_store.db(), &STORE_TABLES)?;
    verify(to, target_store.db(), &STORE_TABLES, &copied)?;
    let ledger = copy_tables(source_ledger.db(), target_ledger.db(), &LEDGER_TABLES)?;
    verify(to, target_ledger.db(), &LEDGER_TABLES, &ledger)?;
    copied.extend(ledger);
    Ok(copied)
}

/// Reads each of `tables` back from `db` (after its copy committed) and
/// compares it with what was read from the source (`copied`, in the same
/// order).
fn verify(to: &State, db: &mut Db, tables: &[Table], copied: &[Copied]) -> Result<(), StateError> {
    for (t, c) in tables.iter().zip(copied) {
        let read_back = copy::digest(db, t)?;
        let want = &c.digest;
        if &read_back != want {
            return Err(invalid(
                to,
                format!(
                    "table {} reads back as {} rows ({}), not the source's {} ({})",
                    t.name, read_back.rows, read_back.sha256, want.rows, want.sha256
                ),
            ));
        }
    }
    Ok(())
}

fn count_rows(db: &mut Db, tables: &[&str]) -> Result<i64, StateError> {
    let mut n = 0;
    for t in tables {
        n += db
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])?
            .int(0)?;
    }
    Ok(n)
}

/// Copies `tables` in one transaction of `to`, then moves PostgreSQL's id
/// sequences past the copied ids.
fn copy_tables(from: &mut Db, to: &mut Db, tables: &[Table]) -> Result<Vec<Copied>, StateError> {
    let postgres = to.is_postgres();
    Ok(to.transaction(|tx| {
        let mut out = Vec::new();
        for t in tables {
            let digest = copy::copy(from, tx, t)?;
            if postgres && SERIAL_IDS.contains(&t.name) {
                tx.query(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{0}', 'id'), \
                         COALESCE((SELECT max(id) FROM {0}), 0) + 1, false)",
                        t.name
                    ),
                    &[],
                )?;
            }
            out.push(Copied {
                table: t.name,
                digest,
            });
        }
        Ok(out)
    })?)
}
