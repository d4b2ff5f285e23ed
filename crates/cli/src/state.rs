//! `gpt2 state migrate|copy`: a server state's schema, and moving a whole
//! state between a directory (SQLite) and PostgreSQL.

use anyhow::Result;
use gpt2_serve::state_copy::copy_state;
use gpt2_serve::State;
use serde_json::json;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Bring a state's tables to this gpt2's schema (servers also do it
    /// when they start; a schema newer than this gpt2 is refused).
    Migrate(MigrateArgs),
    /// Copy keys, quotas, audit, ledger and watermark key into an empty
    /// state, then read every table back and compare counts and SHA-256.
    Copy(CopyArgs),
}

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// A state directory or a PostgreSQL URL.
    #[arg(long)]
    state: String,
}

#[derive(clap::Args)]
pub struct CopyArgs {
    /// The state to copy (only read).
    #[arg(long)]
    from: String,
    /// The empty state to copy into (a directory is created if missing).
    #[arg(long)]
    to: String,
    /// Print one JSON object: `{"tables": [{"table", "rows", "sha256"}]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Migrate(a) => {
            let state = State::create(&a.state)?;
            state.store()?;
            state.ledger()?;
            println!(
                "{}: store schema {}, ledger schema {}",
                state.describe(),
                gpt2_serve::store::SCHEMA_VERSION,
                gpt2_provenance::ledger::SCHEMA_VERSION
            );
            Ok(())
        }
        Command::Copy(a) => copy(a),
    }
}

fn copy(a: CopyArgs) -> Result<()> {
    let from = State::existing(&a.from)?;
    let to = State::create(&a.to)?;
    anyhow::ensure!(
        from.describe() != to.describe(),
        "--from and --to are the same state"
    );
    let copied = copy_state(&from, &to)?;
    if a.json {
        let tables: Vec<_> = copied
            .iter()
            .map(|c| json!({"table": c.table, "rows": c.digest.rows, "sha256": c.digest.sha256}))
            .collect();
        println!("{}", json!({ "tables": tables }));
        return Ok(());
    }
    for c in &copied {
        println!(
            "{:<13} {:>9} rows  sha256 {}",
            c.table, c.digest.rows, c.digest.sha256
        );
    }
    println!(
        "copied {} into {}; every table read back equal",
        from.describe(),
        to.describe()
    );
    Ok(())
}
