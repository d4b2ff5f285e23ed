//! Copying a table between databases, page by page in key order, and the
//! digest that proves both sides hold the same rows.

use crate::{DbError, Result, Row, Sql, Value};
use sha2::{Digest, Sha256};

/// A table to copy: its columns, and the primary key's columns (a prefix
/// of nothing in particular: any unique, indexed column list), by which
/// rows are paged and digested in one order on both databases.
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [&'static str],
    pub key: &'static [&'static str],
}

/// How many rows a table holds and the SHA-256 of all of them in key
/// order (each value with its kind, so NULL, 0 and "" differ; text and
/// bytes are one kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: u64,
    pub sha256: String,
}

/// Rows read per page.
const PAGE: usize = 2000;

/// Most parameters one INSERT carries (SQLite's limit is 32,766,
/// PostgreSQL's 65,535).
const MAX_PARAMS: usize = 30_000;

struct Digester {
    rows: u64,
    hash: Sha256,
}

impl Digester {
    fn new() -> Digester {
        Digester {
            rows: 0,
            hash: Sha256::new(),
        }
    }

    fn add(&mut self, row: &Row) {
        self.rows += 1;
        for v in row.values() {
            match v {
                Value::Null => self.hash.update([0]),
                Value::Int(i) => {
                    self.hash.update([1]);
                    self.hash.update(i.to_le_bytes());
                }
                Value::Real(r) => {
                    self.hash.update([2]);
                    self.hash.update(r.to_bits().to_le_bytes());
                }
                // Text and bytes digest alike: a text column that PostgreSQL
                // keeps as BYTEA (it may hold U+0000) reads back as bytes.
                Value::Text(t) => self.bytes(t.as_bytes()),
                Value::Blob(b) => self.bytes(b),
            }
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.hash.update([3]);
        self.hash.update((b.len() as u64).to_le_bytes());
        self.hash.update(b);
    }

    fn finish(self) -> TableDigest {
        TableDigest {
            rows: self.rows,
            sha256: self
                .hash
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        }
    }
}

/// Visits every row of `t` in key order, a page at a time (keyset paging
/// on the key's row value, which both databases answer from the index).
fn each_page(
    db: &mut impl Sql,
    t: &Table,
    mut visit: impl FnMut(&[Row]) -> Result<()>,
) -> Result<()> {
    let cols = t.columns.join(", ");
    let key = t.key.join(", ");
    let first = format!("SELECT {cols} FROM {} ORDER BY {key} LIMIT {PAGE}", t.name);
    let marks: Vec<String> = (1..=t.key.len()).map(|i| format!("${i}")).collect();
    let next = format!(
        "SELECT {cols} FROM {} WHERE ({key}) > ({}) ORDER BY {key} LIMIT {PAGE}",
        t.name,
        marks.join(", ")
    );
    let positions: Vec<usize> = t
        .key
        .iter()
        .map(|k| {
            t.columns
                .iter()
                .position(|c| c == k)
                .ok_or_else(|| DbError::sql(t.name, format!("key column {k} is not copied")))
        })
        .collect::<Result<_>>()?;
    let mut after: Option<Vec<Value>> = None;
    loop {
        let page = match &after {
            None => db.query(&first, &[])?,
            Some(k) => db.query(&next, k)?,
        };
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(
            positions
                .iter()
                .map(|&i| last.values()[i].clone())
                .collect(),
        );
        visit(&page)?;
        if page.len() < PAGE {
            return Ok(());
        }
    }
}

/// The digest of `t` as `db` holds it.
pub fn digest(db: &mut impl Sql, t: &Table) -> Result<TableDigest> {
    let mut d = Digester::new();
    each_page(db, t, |page| {
        page.iter().for_each(|r| d.add(r));
        Ok(())
    })?;
    Ok(d.finish())
}

/// Inserts every row of `t` from `from` into `to` (in the caller's
/// transaction); returns the digest of what was read.
pub fn copy(from: &mut impl Sql, to: &mut impl Sql, t: &Table) -> Result<TableDigest> {
    let width = t.columns.len();
    let per_insert = (MAX_PARAMS / width).clamp(1, 500);
    let insert = |n: usize| {
        let rows: Vec<String> = (0..n)
            .map(|r| {
                let marks: Vec<String> = (0..width)
                    .map(|c| format!("${}", r * width + c + 1))
                    .collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        format!(
            "INSERT INTO {} ({}) VALUES {}",
            t.name,
            t.columns.join(", "),
            rows.join(", ")
        )
    };
    let full = insert(per_insert);
    let mut d = Digester::new();
    each_page(from, t, |page| {
        for chunk in page.chunks(per_insert) {
            let params: Vec<Value> = chunk.iter().flat_map(|r| r.values().to_vec()).collect();
            let sql = if chunk.len() == per_insert {
                full.clone()
            } else {
                insert(chunk.len())
            };
            to.execute(&sql, &params)?;
            chunk.iter().for_each(|r| d.add(r));
        }
        Ok(())
    })?;
    Ok(d.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{values, Db};

    const T: Table = Table {
        name: "t",
        columns: &["a", "b", "v"],
        key: &["a", "b"],
    };

    #[test]
    fn a_copy_has_the_digest_of_its_source_over_many_pages() {
        let open = || Db::sqlite(rusqlite::Connection::open_in_memory().unwrap(), "mem");
        let (mut from, mut to) = (open(), open());
        for db in [&mut from, &mut to] {
            db.batch("CREATE TABLE t (a INTEGER, b TEXT, v BLOB, PRIMARY KEY (a, b))")
                .unwrap();
        }
        from.transaction(|tx| {
            for i in 0..(2 * PAGE + 7) as i64 {
                let v = if i % 3 == 0 {
                    None
                } else {
                    Some(vec![i as u8])
                };
                tx.execute(
                    "INSERT INTO t VALUES ($1, $2, $3)",
                    values![i / 2, format!("{i}"), v],
                )?;
            }
            Ok(())
        })
        .unwrap();
        let copied = to.transaction(|tx| copy(&mut from, tx, &T)).unwrap();
        assert_eq!(copied.rows, 2 * PAGE as u64 + 7);
        assert_eq!(digest(&mut to, &T).unwrap(), copied);
        to.execute("UPDATE t SET v = NULL WHERE a = 5", &[])
            .unwrap();
        assert_ne!(digest(&mut to, &T).unwrap(), copied);
    }
}
