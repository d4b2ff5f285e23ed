//! `gpt2 audit --state DIR|URL`: the server's record of every request.

use anyhow::Result;
use gpt2_serve::State;

#[derive(clap::Args)]
pub struct Args {
    /// The server's state: a directory or a PostgreSQL URL.
    #[arg(long)]
    state: String,
    /// Only this key's requests.
    #[arg(long)]
    key: Option<String>,
    /// The newest N entries.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// One JSON object per line: `{"time_ms", "key_id", "endpoint",
    /// "model", "prompt_tokens", "completion_tokens", "status",
    /// "latency_ms", "note"}`.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut store = State::existing(&a.state)?.store()?;
    let entries = store.audit_log(a.key.as_deref(), a.limit)?;
    for e in &entries {
        if a.json {
            println!("{}", serde_json::to_string(e)?);
        } else {
            println!(
                "{}  {}  {} {}  model={}  tokens={}+{}  {:.1} ms{}",
                e.time_ms,
                e.key_id.as_deref().unwrap_or("-"),
                e.status,
                e.endpoint,
                e.model.as_deref().unwrap_or("-"),
                e.prompt_tokens,
                e.completion_tokens,
                e.latency_ms,
                e.note
                    .as_deref()
                    .map(|n| format!("  {n}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}
