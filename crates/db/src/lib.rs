//! One SQL connection over SQLite or PostgreSQL, so that the server's state
//! (keys, quotas, audit) and the provenance ledger are written once, as SQL
//! both databases run, and kept either in files beside the server or in a
//! PostgreSQL database that every replica shares.
//!
//! Statements use PostgreSQL's `$1, $2, ...` placeholders (rewritten to
//! SQLite's `?1, ?2, ...`), values are the five SQLite storage classes
//! ([`Value`]), and PostgreSQL columns are `BIGINT`, `DOUBLE PRECISION`,
//! `TEXT` and `BYTEA`, so that one statement means the same on both.
//!
//! A PostgreSQL connection that drops is made again at the next statement:
//! a server whose database went away answers [`DbError::Unavailable`] until
//! it returns, and needs no restart.

pub mod copy;
mod postgres_conn;
pub mod test_cluster;
mod value;

pub use postgres_conn::PgTarget;
pub use value::{Row, Value};

use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached now (down, restarting, network): a
    /// caller may try again later, and a server answers 503.
    #[error("{name}: {message}")]
    Unavailable { name: String, message: String },
    /// Anything else: a refused statement, a bad URL, wrong credentials, a
    /// schema this code does not know.
    #[error("{name}: {message}")]
    Sql { name: String, message: String },
}

impl DbError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable { .. })
    }

    pub fn sql(name: &str, message: impl Into<String>) -> DbError {
        DbError::Sql {
            name: name.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, DbError>;

/// `&[Value]` from a list of anything that converts into a [`Value`].
#[macro_export]
macro_rules! values {
    ($($v:expr),* $(,)?) => { &[$($crate::Value::from($v)),*] };
}

/// Running statements: a connection ([`Db`]) or a transaction ([`Tx`]).
pub trait Sql {
    /// What errors call this database: a file's path, or a URL without
    /// its password.
    fn name(&self) -> &str;
    /// Runs one statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;
    /// Runs one query; returns all its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Runs statements separated by `;`, without parameters (schema).
    fn batch(&mut self, sql: &str) -> Result<()>;

    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row> {
        let name = self.name().to_string();
        self.query_opt(sql, params)?
            .ok_or_else(|| DbError::sql(&name, format!("no row from {sql:?}")))
    }
}

/// One step of a schema: what it runs on each database.
pub struct Migration {
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// A connection to SQLite (one file) or PostgreSQL (one schema of a
/// database).
pub struct Db {
    conn: Conn,
    name: String,
}

// A handful of connections per process: their size does not matter.
#[allow(clippy::large_enum_variant)]
enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(postgres_conn::Pg),
}

/// A transaction: committed when the closure given to
/// [`Db::transaction`] returns `Ok`, rolled back otherwise.
pub struct Tx<'a> {
    inner: TxInner<'a>,
    name: &'a str,
}

enum TxInner<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Postgres(
        postgres::Transaction<'a>,
        &'a mut HashMap<String, postgres::Statement>,
    ),
}

impl Db {
    /// A SQLite connection the caller opened and configured; `name` (its
    /// path) names it in errors.
    pub fn sqlite(conn: rusqlite::Connection, name: impl Into<String>) -> Db {
        Db {
            conn: Conn::Sqlite(conn),
            name: name.into(),
        }
    }

    /// Connects to PostgreSQL (see [`PgTarget::parse`]); the error names
    /// the cause (bad URL, unreachable, refused credentials).
    pub fn postgres(target: &PgTarget) -> Result<Db> {
        Ok(Db {
            conn: Conn::Postgres(postgres_conn::Pg::connect(target)?),
            name: target.display(),
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.conn, Conn::Postgres(_))
    }

    /// The SQLite connection, for what only SQLite has (pragmas, checks).
    pub fn sqlite_conn(&self) -> Option<&rusqlite::Connection> {
        match &self.conn {
            Conn::Sqlite(c) => Some(c),
            Conn::Postgres(_) => None,
        }
    }

    /// Runs `f` in one transaction that holds the database's write lock
    /// from its start on SQLite (`BEGIN IMMEDIATE`); on PostgreSQL, take
    /// [`Tx::lock`] for what must not interleave.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let name = self.name.as_str();
        match &mut self.conn {
            Conn::Sqlite(c) => {
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(|e| sqlite_err(name, e))?;
                let mut tx = Tx {
                    inner: TxInner::Sqlite(tx),
                    name,
                };
                let out = f(&mut tx)?;
                match tx.inner {
                    TxInner::Sqlite(t) => t.commit().map_err(|e| sqlite_err(name, e))?,
                    TxInner::Postgres(..) => unreachable!("a SQLite connection's transaction"),
                }
                Ok(out)
            }
            Conn::Postgres(pg) => pg.transaction(name, f),
        }
    }

    /// Brings `component`'s schema to `steps.len()` under the write lock,
    /// so that servers starting together migrate once; a version newer
    /// than this code knows is refused. SQLite keeps the version of the
    /// file's one component in `PRAGMA user_version`; PostgreSQL, whose one
    /// schema holds every component, in the `versions` table.
    pub fn migrate(&mut self, component: &str, steps: &[Migration]) -> Result<()> {
        let schema = match &self.conn {
            Conn::Postgres(pg) => Some(pg.schema().to_string()),
            Conn::Sqlite(_) => None,
        };
        let postgres = schema.is_some();
        let known = steps.len() as i64;
        self.transaction(|tx| {
            tx.lock("schema")?;
            if let Some(schema) = &schema {
                postgres_conn::create_schema(tx, schema)?;
            }
            let version = if postgres {
                tx.query_opt(
                    "SELECT version FROM versions WHERE component = $1",
                    values![component],
                )?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0)
            } else {
                tx.query_one("PRAGMA user_version", &[])?.int(0)?
            };
            if version > known {
                return Err(DbError::sql(
                    tx.name(),
                    format!(
                        "{component} schema version {version} was written by a newer gpt2 \
                         (this one knows {known})"
                    ),
                ));
            }
            for step in &steps[version as usize..] {
                tx.batch(if postgres { step.postgres } else { step.sqlite })?;
            }
            if version < known {
                if postgres {
                    tx.execute(
                        "INSERT INTO versions (component, version) VALUES ($1, $2) \
                         ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                        values![component, known],
                    )?;
                } else {
                    tx.batch(&format!("PRAGMA user_version = {known}"))?;
                }
            }
            Ok(())
        })
    }
}

impl Sql for Db {
    fn name(&self) -> &str {
        &self.name
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        match &mut self.conn {
            Conn::Sqlite(c) => sqlite_execute(c, &self.name, sql, params),
            Conn::Postgres(pg) => pg.with(&self.name, |c, s| {
                postgres_conn::execute(c, s, &self.name, sql, params)
            }),
        }
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match &mut self.conn {
            Conn::Sqlite(c) => sqlite_query(c, &self.name, sql, params),
            Conn::Postgres(pg) => pg.with(&self.name, |c, s| {
                postgres_conn::query(c, s, &self.name, sql, params)
            }),
        }
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        match &mut self.conn {
            Conn::Sqlite(c) => c.execute_batch(sql).map_err(|e| sqlite_err(&self.name, e)),
            Conn::Postgres(pg) => pg.with(&self.name, |c, _| {
                c.batch_execute(sql)
                    .map_err(|e| postgres_conn::classify(&self.name, e))
            }),
        }
    }
}

impl Tx<'_> {
    /// Serialises this transaction against every other that locks `what`,
    /// in every process, until it ends. On SQLite the transaction already
    /// holds the file's write lock; on PostgreSQL this is an advisory
    /// transaction lock.
    pub fn lock(&mut self, what: &str) -> Result<()> {
        if let TxInner::Postgres(..) = self.inner {
            self.execute("SELECT pg_advisory_xact_lock(hashtext($1))", values![what])?;
        }
        Ok(())
    }
}

impl Sql for Tx<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        match &mut self.inner {
            TxInner::Sqlite(t) => sqlite_execute(t, self.name, sql, params),
            TxInner::Postgres(t, s) => postgres_conn::execute(t, s, self.name, sql, params),
        }
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match &mut self.inner {
            TxInner::Sqlite(t) => sqlite_query(t, self.name, sql, params),
            TxInner::Postgres(t, s) => postgres_conn::query(t, s, self.name, sql, params),
        }
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        match &mut self.inner {
            TxInner::Sqlite(t) => t.execute_batch(sql).map_err(|e| sqlite_err(self.name, e)),
            TxInner::Postgres(t, _) => t
                .batch_execute(sql)
                .map_err(|e| postgres_conn::classify(self.name, e)),
        }
    }
}

fn sqlite_err(name: &str, e: rusqlite::Error) -> DbError {
    DbError::sql(name, e.to_string())
}

/// `$1` → `?1`: SQLite numbers `$1` by first appearance, not by its digits.
/// Every `$` is a placeholder: statements never hold one in a literal.
fn sqlite_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    if sql.contains('$') {
        sql.replace('$', "?").into()
    } else {
        sql.into()
    }
}

fn sqlite_execute(
    c: &rusqlite::Connection,
    name: &str,
    sql: &str,
    params: &[Value],
) -> Result<u64> {
    c.prepare_cached(&sqlite_placeholders(sql))
        .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
        .map(|n| n as u64)
        .map_err(|e| sqlite_err(name, e))
}

fn sqlite_query(
    c: &rusqlite::Connection,
    name: &str,
    sql: &str,
    params: &[Value],
) -> Result<Vec<Row>> {
    let run = || -> rusqlite::Result<Vec<Row>> {
        let mut s = c.prepare_cached(&sqlite_placeholders(sql))?;
        let width = s.column_count();
        let mut rows = s.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let values = (0..width)
                .map(|i| r.get_ref(i).map(Value::from_sqlite))
                .collect::<rusqlite::Result<Vec<Value>>>()?;
            out.push(Row::new(values));
        }
        Ok(out)
    };
    run().map_err(|e| sqlite_err(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_sqlites() {
        assert_eq!(
            sqlite_placeholders("SELECT $1, $2 WHERE a = $1"),
            "SELECT ?1, ?2 WHERE a = ?1"
        );
    }

    #[test]
    fn sqlite_statements_round_trip_every_value() {
        let mut db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap(), "mem");
        db.batch("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n INTEGER)")
            .unwrap();
        let n = db
            .execute(
                "INSERT INTO t VALUES ($1, $2, $3, $4, $5)",
                values![7i64, 0.5f64, "x", vec![1u8, 2], None::<i64>],
            )
            .unwrap();
        assert_eq!(n, 1);
        let r = db
            .query_one("SELECT i, r, s, b, n FROM t WHERE s = $1", values!["x"])
            .unwrap();
        assert_eq!(r.int(0).unwrap(), 7);
        assert_eq!(r.real(1).unwrap(), 0.5);
        assert_eq!(r.text(2).unwrap(), "x");
        assert_eq!(r.blob(3).unwrap(), vec![1, 2]);
        assert_eq!(r.opt_int(4).unwrap(), None);
        assert!(r.text(0).unwrap_err().to_string().contains("column 0"));
    }

    #[test]
    fn a_failed_transaction_writes_nothing_and_migrations_refuse_newer() {
        let mut db = Db::sqlite(rusqlite::Connection::open_in_memory().unwrap(), "mem");
        let steps = [Migration {
            sqlite: "CREATE TABLE t (i INTEGER)",
            postgres: "",
        }];
        db.migrate("test", &steps).unwrap();
        db.migrate("test", &steps).unwrap();
        let r: Result<()> = db.transaction(|tx| {
            tx.execute("INSERT INTO t VALUES (1)", &[])?;
            Err(DbError::sql("mem", "no"))
        });
        assert!(r.is_err());
        assert_eq!(
            db.query_one("SELECT count(*) FROM t", &[])
                .unwrap()
                .int(0)
                .unwrap(),
            0
        );
        db.batch("PRAGMA user_version = 5").unwrap();
        let e = db.migrate("test", &steps).unwrap_err().to_string();
        assert!(e.contains("version 5") && e.contains("newer"), "{e}");
    }

    const PG_STEPS: [Migration; 1] = [Migration {
        sqlite: "",
        postgres: "CREATE TABLE t (i BIGINT, r DOUBLE PRECISION, s TEXT, b BYTEA)",
    }];

    fn cluster() -> Option<test_cluster::TestCluster> {
        match test_cluster::TestCluster::start() {
            Ok(c) => Some(c),
            Err(why) => {
                eprintln!("skipped: no PostgreSQL to test against: {why}");
                None
            }
        }
    }

    #[test]
    fn postgres_runs_the_same_statements_and_comes_back_after_a_restart() {
        let Some(pg) = cluster() else { return };
        let target = PgTarget::parse(&pg.url("t1")).unwrap();
        let mut db = Db::postgres(&target).unwrap();
        db.migrate("test", &PG_STEPS).unwrap();
        db.migrate("test", &PG_STEPS).unwrap();
        db.execute(
            "INSERT INTO t VALUES ($1, $2, $3, $4)",
            values![7i64, 0.5f64, "x", vec![1u8, 2]],
        )
        .unwrap();
        let r = db
            .query_one("SELECT i, r, s, b, count(*) OVER () FROM t", &[])
            .unwrap();
        assert_eq!(r.values(), values![7i64, 0.5f64, "x", vec![1u8, 2], 1i64]);
        let failed: Result<()> = db.transaction(|tx| {
            tx.lock("t")?;
            tx.execute("INSERT INTO t (i) VALUES (2)", &[])?;
            Err(DbError::sql("x", "no"))
        });
        assert!(failed.is_err());
        pg.stop().unwrap();
        let e = db.query("SELECT count(*) FROM t", &[]).unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        pg.start_server().unwrap();
        let n = db
            .query_one("SELECT count(*) FROM t", &[])
            .unwrap()
            .int(0)
            .unwrap();
        assert_eq!(n, 1, "the failed transaction wrote nothing");
        db.execute("UPDATE versions SET version = 9", &[]).unwrap();
        let e = db.migrate("test", &PG_STEPS).unwrap_err().to_string();
        assert!(e.contains("version 9") && e.contains("newer"), "{e}");
    }

    #[test]
    fn postgres_refuses_wrong_credentials_and_a_foreign_schema() {
        let Some(pg) = cluster() else { return };
        let wrong = pg.url("t2").replace(test_cluster::PASSWORD, "wrong");
        let e = Db::postgres(&PgTarget::parse(&wrong).unwrap())
            .err()
            .unwrap();
        assert!(
            !e.is_unavailable() && e.to_string().contains("password"),
            "{e}"
        );
        assert!(!e.to_string().contains("wrong"), "{e}");
        let target = PgTarget::parse(&pg.url("other")).unwrap();
        let mut db = Db::postgres(&target).unwrap();
        db.batch("CREATE SCHEMA other; CREATE TABLE other.customers (id BIGINT)")
            .unwrap();
        let e = db.migrate("test", &PG_STEPS).unwrap_err().to_string();
        assert!(e.contains("gpt2 did not make"), "{e}");
        let n = db
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'other'",
                &[],
            )
            .unwrap()
            .int(0)
            .unwrap();
        assert_eq!(n, 1, "nothing was written");
    }
}
