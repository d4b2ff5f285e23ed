//! `gpt2 ledger ...` (being written).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<()> {
    anyhow::bail!("gpt2 ledger is not built yet")
}
