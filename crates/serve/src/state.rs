//! The state (`--state DIR` or `--state postgres://...`) that `gpt2
//! serve`, `gpt2 keys`, `gpt2 audit` and `gpt2 ledger --state` share.
//!
//! A directory (SQLite, nothing to install) holds:
//!
//! - `keys.sqlite`: API keys (hashes only) and the audit log;
//! - `ledger.sqlite`: the provenance ledger of every completion;
//! - `watermark.key`: the server's watermark key, made on first start
//!   (owner-only permissions, never overwritten).
//!
//! A PostgreSQL schema holds the same in tables, shared by every replica:
//! one set of keys, quotas, audit and ledger, and one watermark key.

use crate::store::{Store, StoreError};
use gpt2_db::{values, PgTarget, Sql};
use gpt2_provenance::ledger::{Ledger, LedgerError};
use gpt2_provenance::watermark_key::{KeyParams, WatermarkKey};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] gpt2_provenance::watermark::KeyError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Db(#[from] gpt2_db::DbError),
}

/// Where the server's state lives.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per process
pub enum State {
    Dir(StateDir),
    Postgres(PgTarget),
}

impl State {
    /// `--state` as given: a PostgreSQL URL, or a directory created if
    /// missing.
    pub fn create(spec: &str) -> Result<State, StateError> {
        match PgTarget::is_url(spec) {
            true => Ok(State::Postgres(PgTarget::parse(spec)?)),
            false => Ok(State::Dir(StateDir::create(Path::new(spec))?)),
        }
    }

    /// As `create`, but a directory must exist (reading commands never
    /// make one).
    pub fn existing(spec: &str) -> Result<State, StateError> {
        match PgTarget::is_url(spec) {
            true => Ok(State::Postgres(PgTarget::parse(spec)?)),
            false => Ok(State::Dir(StateDir::existing(Path::new(spec))?)),
        }
    }

    /// The directory, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            State::Dir(d) => d.path().display().to_string(),
            State::Postgres(t) => t.display(),
        }
    }

    /// Keys, quotas and audit (migrated to this code's schema).
    pub fn store(&self) -> Result<Store, StateError> {
        Ok(match self {
            State::Dir(d) => d.store()?,
            State::Postgres(t) => Store::open_postgres(t)?,
        })
    }

    /// The provenance ledger (created, keeping texts, if missing).
    pub fn ledger(&self) -> Result<Ledger, StateError> {
        self.ledger_with_mode(false)
    }

    /// The ledger, created hash-only if `hash_only` and missing; an
    /// existing text-keeping ledger is then refused.
    pub fn ledger_with_mode(&self, hash_only: bool) -> Result<Ledger, StateError> {
        Ok(match self {
            State::Dir(d) => Ledger::open_with_mode(&d.ledger_path(), hash_only)?,
            State::Postgres(t) => Ledger::open_postgres(t, hash_only)?,
        })
    }

    /// The watermark key if one was made (never makes one).
    pub fn existing_watermark_key(&self) -> Result<Option<WatermarkKey>, StateError> {
        match self {
            State::Dir(d) if !d.watermark_key_path().exists() => Ok(None),
            State::Dir(d) => d.watermark_key().map(Some),
            State::Postgres(t) => self.postgres_key(t, None),
        }
    }

    /// Makes `key` this state's watermark key; a state that has another
    /// key already is refused (the texts it marked would go undetected).
    pub fn install_watermark_key(&self, key: &WatermarkKey) -> Result<(), StateError> {
        let have = match self {
            State::Dir(d) if !d.watermark_key_path().exists() => {
                write_new_secret(&d.watermark_key_path(), key.to_json().as_bytes())?;
                self.existing_watermark_key()?
            }
            State::Dir(_) => self.existing_watermark_key()?,
            State::Postgres(t) => self.postgres_key(t, Some(key))?,
        };
        if have.as_ref().map(|k| &k.id) != Some(&key.id) {
            return Err(StateError::Io {
                path: self.watermark_key_location(),
                message: format!(
                    "holds another watermark key ({}) than {}; nothing was copied",
                    have.map(|k| k.id).unwrap_or_default(),
                    key.id
                ),
            });
        }
        Ok(())
    }

    /// The server's watermark key, made with [`SERVER_KEY_PARAMS`] the
    /// first time. On PostgreSQL the first replica's key is every
    /// replica's: replicas starting together each offer a fresh key, it is
    /// inserted only where there is none, and the one stored is read.
    pub fn watermark_key(&self) -> Result<WatermarkKey, StateError> {
        let t = match self {
            State::Dir(d) => return d.watermark_key(),
            State::Postgres(t) => t,
        };
        self.postgres_key(t, Some(&new_server_key()))?
            .ok_or_else(|| StateError::Io {
                path: self.watermark_key_location(),
                message: "the watermark key was written but cannot be read back".into(),
            })
    }

    /// The PostgreSQL state's watermark key, after storing `offer` if it
    /// has none (one connection for both).
    fn postgres_key(
        &self,
        t: &PgTarget,
        offer: Option<&WatermarkKey>,
    ) -> Result<Option<WatermarkKey>, StateError> {
        let mut store = Store::open_postgres(t)?;
        let db = store.db();
        if let Some(key) = offer {
            db.execute(
                "INSERT INTO watermark_key (id, json) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
                values![key.to_json()],
            )?;
        }
        let row = db.query_opt("SELECT json FROM watermark_key WHERE id = 1", &[])?;
        let Some(json) = row.map(|r| r.text(0)).transpose()? else {
            return Ok(None);
        };
        Ok(Some(WatermarkKey::from_json(
            &json,
            &self.watermark_key_location(),
        )?))
    }

    /// Where the watermark key is, for messages.
    pub fn watermark_key_location(&self) -> String {
        match self {
            State::Dir(d) => d.watermark_key_path().display().to_string(),
            State::Postgres(t) => format!("{} (table watermark_key)", t.display()),
        }
    }
}

/// A fresh server key from the operating system's CSPRNG.
fn new_server_key() -> WatermarkKey {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    WatermarkKey::from_secret(secret, SERVER_KEY_PARAMS)
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |e| StateError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl StateDir {
    /// The directory, created if missing.
    pub fn create(dir: &Path) -> Result<StateDir, StateError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// An existing directory (reading commands never create one).
    pub fn existing(dir: &Path) -> Result<StateDir, StateError> {
        if !dir.is_dir() {
            return Err(StateError::Io {
                path: dir.display().to_string(),
                message: "no such state directory (gpt2 serve or gpt2 keys create makes it)".into(),
            });
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn keys_path(&self) -> PathBuf {
        self.dir.join("keys.sqlite")
    }

    pub fn ledger_path(&self) -> PathBuf {
        Self::ledger_path_in(&self.dir)
    }

    /// Where the ledger of the state directory `dir` is.
    pub fn ledger_path_in(dir: &Path) -> PathBuf {
        dir.join("ledger.sqlite")
    }

    pub fn watermark_key_path(&self) -> PathBuf {
        self.dir.join("watermark.key")
    }

    pub fn store(&self) -> Result<Store, StateError> {
        Ok(Store::open(&self.keys_path())?)
    }

    /// The server's watermark key, created with [`SERVER_KEY_PARAMS`] on
    /// first use (an existing key file is used as it is).
    pub fn watermark_key(&self) -> Result<WatermarkKey, StateError> {
        let path = self.watermark_key_path();
        let name = path.display().to_string();
        if !path.exists() {
            write_new_secret(&path, new_server_key().to_json().as_bytes())?;
        }
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(WatermarkKey::from_json(&text, &name)?)
    }
}

/// The server's watermark: KGW (gamma 0.25, delta 2) seeded by SelfHash
/// over a window of four tokens. A context of one token (LeftHash, h = 1)
/// gives only 50,257 green lists, which a detect key could learn and use to
/// write text the server would call its own; a four-token window anchored
/// by min-hash keeps detection sturdy under edits (docs/serve.md).
pub const SERVER_KEY_PARAMS: KeyParams = KeyParams {
    scheme: gpt2_provenance::watermark_key::Scheme::Kgw,
    seeding: gpt2_provenance::watermark_key::Seeding::SelfHash,
    gamma: 0.25,
    delta: 2.0,
    context_width: 4,
};

/// Creates `path` for a secret: never overwrites, owner-only permissions.
fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io_err(path))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_key_is_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(&dir.path().join("state")).unwrap();
        let a = state.watermark_key().unwrap();
        let b = state.watermark_key().unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!((a.seeding, a.context_width), (SERVER_KEY_PARAMS.seeding, 4));
    }
}
