//! `gpt2 keys create|list|revoke --state DIR|URL`: the API keys of `gpt2 serve`.

use anyhow::Result;
use gpt2_serve::{KeyInfo, NewKey, Scope, State};
use serde_json::json;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a key and print its secret (shown once; only its hash is kept).
    Create(CreateArgs),
    /// List the keys (never their secrets).
    List(ListArgs),
    /// Revoke a key; the server refuses it from its next request on.
    Revoke(RevokeArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The server's state: a directory (created if missing) or a
    /// PostgreSQL URL (`postgres://user@host:port/db`).
    #[arg(long)]
    state: String,
    /// Who the key is for (an organisation).
    #[arg(long)]
    name: String,
    /// The agreed purpose, for the record.
    #[arg(long, default_value = "")]
    purpose: String,
    /// Comma-separated: generate, score, detect, admin.
    #[arg(long, value_delimiter = ',', required = true)]
    scopes: Vec<String>,
    /// Comma-separated model names the key may use (`*`: all).
    #[arg(long, value_delimiter = ',', required = true)]
    models: Vec<String>,
    /// Prompt and completion tokens per UTC day (default: unlimited).
    #[arg(long)]
    tokens_per_day: Option<u64>,
    /// Requests per minute (default: unlimited).
    #[arg(long)]
    requests_per_minute: Option<u32>,
    /// Print `{"key", "id"}`.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// The server's state: a directory or a PostgreSQL URL.
    #[arg(long)]
    state: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The server's state: a directory or a PostgreSQL URL.
    #[arg(long)]
    state: String,
    /// The key's id (`gpt2 keys list`).
    id: String,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Create(a) => create(a),
        Command::List(a) => list(a),
        Command::Revoke(a) => {
            State::existing(&a.state)?.store()?.revoke(&a.id)?;
            println!("revoked {}", a.id);
            Ok(())
        }
    }
}

fn create(a: CreateArgs) -> Result<()> {
    let scopes = a
        .scopes
        .iter()
        .map(|s| Scope::parse(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(
        a.requests_per_minute != Some(0) && a.tokens_per_day != Some(0),
        "a limit of 0 would refuse every request; revoke the key instead"
    );
    let mut store = State::create(&a.state)?.store()?;
    let (id, key) = store.create_key(&NewKey {
        name: a.name,
        purpose: a.purpose,
        scopes,
        models: a.models.iter().map(|m| m.trim().to_string()).collect(),
        tokens_per_day: a.tokens_per_day,
        requests_per_minute: a.requests_per_minute,
    })?;
    if a.json {
        println!("{}", json!({"key": key, "id": id}));
    } else {
        println!("{key}");
        eprintln!("key id {id}; the key is shown only now, keep it safe");
    }
    Ok(())
}

fn limit<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string())
        .unwrap_or_else(|| "unlimited".into())
}

fn list(a: ListArgs) -> Result<()> {
    let keys = State::existing(&a.state)?.store()?.list_keys()?;
    if a.json {
        println!("{}", serde_json::to_string(&keys)?);
        return Ok(());
    }
    for k in &keys {
        println!("{}", describe(k));
    }
    Ok(())
}

fn describe(k: &KeyInfo) -> String {
    let scopes: Vec<&str> = k.scopes.iter().map(|s| s.name()).collect();
    format!(
        "{}  {}  scopes={}  models={}  tokens/day={}  requests/min={}  {}{}",
        k.id,
        k.name,
        scopes.join(","),
        k.models.join(","),
        limit(k.tokens_per_day),
        limit(k.requests_per_minute),
        if k.revoked.is_some() {
            "REVOKED"
        } else {
            "live"
        },
        if k.purpose.is_empty() {
            String::new()
        } else {
            format!("  purpose: {}", k.purpose)
        }
    )
}
