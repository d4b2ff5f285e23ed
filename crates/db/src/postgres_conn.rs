//! The PostgreSQL side: where to connect (`postgres://` URL, `PG*`
//! variables), one connection remade when it drops, prepared statements
//! cached per connection, and which errors mean "not reachable now".

use crate::{values, DbError, Result, Row, Sql, Tx, TxInner, Value};
use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Statement};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// A PostgreSQL database and the schema in it that holds gpt2's tables.
#[derive(Debug, Clone)]
pub struct PgTarget {
    config: postgres::Config,
    schema: String,
}

/// How long a connection attempt may take before the database counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl PgTarget {
    /// Whether `spec` is a PostgreSQL URL rather than a path.
    pub fn is_url(spec: &str) -> bool {
        spec.starts_with("postgres://") || spec.starts_with("postgresql://")
    }

    /// `postgres://user:password@host:port/db?schema=NAME`: what the URL
    /// leaves out comes from PGUSER, PGPASSWORD, PGHOST, PGPORT and
    /// PGDATABASE as libpq has it; the tables live in the schema `NAME`
    /// (default `gpt2`), so one database can hold several states.
    pub fn parse(url: &str) -> Result<PgTarget> {
        let bad = |m: String| DbError::sql(&redact(url), m);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = "gpt2".to_string();
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", s)) => schema = s.to_string(),
                _ => rest.push(pair),
            }
        }
        if schema.is_empty()
            || !schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            || !schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(bad(format!(
                "schema {schema:?} must be lowercase letters, digits and _, not starting with a digit"
            )));
        }
        let url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config = postgres::Config::from_str(&url)
            .map_err(|e| bad(format!("not a valid PostgreSQL URL: {e}")))?;
        apply_environment(&mut config);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("gpt2");
        Ok(PgTarget { config, schema })
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The URL without its password, for messages.
    pub fn display(&self) -> String {
        let c = &self.config;
        let host = match c.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        };
        let port = c
            .get_ports()
            .first()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        format!(
            "postgres://{}@{host}{port}/{}?schema={}",
            c.get_user().unwrap_or(""),
            c.get_dbname().unwrap_or(""),
            self.schema
        )
    }
}

/// `scheme://user:secret@host` → `scheme://user@host`, for errors about a
/// URL that did not parse.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((cred, host)) => {
            let user = cred.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_string(),
    }
}

fn apply_environment(c: &mut postgres::Config) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if c.get_user().is_none() {
        if let Some(u) = env("PGUSER").or_else(|| env("USER")) {
            c.user(&u);
        }
    }
    if c.get_password().is_none() {
        if let Some(p) = env("PGPASSWORD") {
            c.password(&p);
        }
    }
    if c.get_hosts().is_empty() {
        c.host(&env("PGHOST").unwrap_or_else(|| "localhost".into()));
    }
    if c.get_ports().is_empty() {
        if let Some(p) = env("PGPORT").and_then(|p| p.parse().ok()) {
            c.port(p);
        }
    }
    if c.get_dbname().is_none() {
        if let Some(d) = env("PGDATABASE") {
            c.dbname(&d);
        }
    }
}

/// One connection, made again when it drops.
pub(crate) struct Pg {
    target: PgTarget,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
}

impl Pg {
    pub(crate) fn connect(target: &PgTarget) -> Result<Pg> {
        let mut pg = Pg {
            target: target.clone(),
            client: None,
            statements: HashMap::new(),
        };
        pg.connected(&target.display())?;
        Ok(pg)
    }

    pub(crate) fn schema(&self) -> &str {
        &self.target.schema
    }

    /// The live connection, made now if there is none.
    fn connected(&mut self, name: &str) -> Result<(&mut Client, &mut HashMap<String, Statement>)> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            let mut client = self
                .target
                .config
                .connect(NoTls)
                .map_err(|e| classify(name, e))?;
            client
                .batch_execute(&format!("SET search_path TO {}", self.target.schema))
                .map_err(|e| classify(name, e))?;
            self.client = Some(client);
        }
        // invariant: set just above when it was missing.
        let client = self.client.as_mut().expect("connected");
        Ok((client, &mut self.statements))
    }

    /// Runs `f` on the connection; a connection that broke is dropped, to
    /// be made again by the next call.
    pub(crate) fn with<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Client, &mut HashMap<String, Statement>) -> Result<T>,
    ) -> Result<T> {
        let (client, statements) = self.connected(name)?;
        let out = f(client, statements);
        self.drop_if_broken();
        out
    }

    pub(crate) fn transaction<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let out = (|| {
            let (client, statements) = self.connected(name)?;
            let tx = client.transaction().map_err(|e| classify(name, e))?;
            let mut tx = Tx {
                inner: TxInner::Postgres(tx, statements),
                name,
            };
            let out = f(&mut tx)?;
            match tx.inner {
                TxInner::Postgres(t, _) => t.commit().map_err(|e| classify(name, e))?,
                TxInner::Sqlite(_) => unreachable!("a PostgreSQL connection's transaction"),
            }
            Ok(out)
        })();
        self.drop_if_broken();
        out
    }

    fn drop_if_broken(&mut self) {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            self.statements.clear();
        }
    }
}

/// Creates the schema and its `versions` table, refusing a schema that
/// holds tables gpt2 did not make.
pub(crate) fn create_schema(tx: &mut Tx<'_>, schema: &str) -> Result<()> {
    let row = tx.query_one(
        "SELECT count(*), count(*) FILTER (WHERE table_name = 'versions') \
         FROM information_schema.tables WHERE table_schema::text = $1",
        values![schema],
    )?;
    let (tables, versions) = (row.int(0)?, row.int(1)?);
    if tables > 0 && versions == 0 {
        return Err(DbError::sql(
            tx.name(),
            format!(
                "schema {schema} holds {tables} tables that gpt2 did not make; \
                 nothing was written (name another schema with ?schema=NAME)"
            ),
        ));
    }
    tx.batch(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {schema}.versions \
         (component TEXT PRIMARY KEY, version BIGINT NOT NULL)"
    ))
}

fn prepared<C: GenericClient>(
    c: &mut C,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
) -> std::result::Result<Statement, postgres::Error> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let s = c.prepare(sql)?;
    cache.insert(sql.to_string(), s.clone());
    Ok(s)
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

pub(crate) fn execute<C: GenericClient>(
    c: &mut C,
    cache: &mut HashMap<String, Statement>,
    name: &str,
    sql: &str,
    params: &[Value],
) -> Result<u64> {
    prepared(c, cache, sql)
        .and_then(|st| c.execute(&st, &refs(params)))
        .map_err(|e| classify(name, e))
}

pub(crate) fn query<C: GenericClient>(
    c: &mut C,
    cache: &mut HashMap<String, Statement>,
    name: &str,
    sql: &str,
    params: &[Value],
) -> Result<Vec<Row>> {
    let rows = prepared(c, cache, sql)
        .and_then(|st| c.query(&st, &refs(params)))
        .map_err(|e| classify(name, e))?;
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| column(r, i).map_err(|e| classify(name, e)))
                .collect::<Result<Vec<Value>>>()
                .map(Row::new)
        })
        .collect()
}

fn column(r: &postgres::Row, i: usize) -> std::result::Result<Value, postgres::Error> {
    let ty = r.columns()[i].type_().clone();
    Ok(match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i)?.into(),
        Type::INT4 => r.try_get::<_, Option<i32>>(i)?.into(),
        Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(i32::from).into(),
        Type::BOOL => r.try_get::<_, Option<bool>>(i)?.into(),
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.into(),
        Type::FLOAT4 => r.try_get::<_, Option<f32>>(i)?.map(f64::from).into(),
        Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.into(),
        // Everything else is read as text (TEXT, VARCHAR, NAME), and a
        // type that is not text is an error naming the column.
        _ => r.try_get::<_, Option<String>>(i)?.into(),
    })
}

/// Whether a failure means the database is out of reach (connection
/// refused, dropped, shutting down) rather than a statement refused.
pub(crate) fn classify(name: &str, e: postgres::Error) -> DbError {
    let unavailable = |message: String| DbError::Unavailable {
        name: name.to_string(),
        message,
    };
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let mut message = db.message().to_string();
        if let Some(d) = db.detail() {
            message = format!("{message} ({d})");
        }
        // Class 08 is a connection exception; 57P01..03 the server
        // shutting down or starting; 53300 too many connections.
        return if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300") {
            unavailable(message)
        } else {
            DbError::sql(name, message)
        };
    }
    let mut message = e.to_string();
    let mut io = false;
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        io |= s.is::<std::io::Error>();
        message = format!("{message}: {s}");
        source = s.source();
    }
    if e.is_closed() || io || message.contains("timeout") {
        unavailable(message)
    } else {
        DbError::sql(name, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_a_schema_and_never_show_the_password() {
        let t = PgTarget::parse("postgres://u:s3cret@127.0.0.1:5433/db?schema=replica_a").unwrap();
        assert_eq!(t.schema(), "replica_a");
        assert_eq!(
            t.display(),
            "postgres://u@127.0.0.1:5433/db?schema=replica_a"
        );
        let e = PgTarget::parse("postgres://u:s3cret@h/db?schema=Bad-Name")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema") && !e.contains("s3cret"), "{e}");
        let e = PgTarget::parse("postgres://u:s3cret@h:notaport/db")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a valid PostgreSQL URL") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(PgTarget::is_url("postgresql://h/db") && !PgTarget::is_url("./state"));
    }

    #[test]
    fn an_unreachable_database_is_unavailable() {
        // Port 1 on loopback: nothing listens there.
        let t = PgTarget::parse("postgres://u@127.0.0.1:1/db").unwrap();
        let e = crate::Db::postgres(&t).err().unwrap();
        assert!(e.is_unavailable(), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    }
}
