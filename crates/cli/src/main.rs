//! `gpt2`: the command-line front end. Argument parsing and printing only;
//! the work happens in the library crates.

mod audit;
mod bench;
mod detect;
mod eval;
mod generate;
mod input;
mod keys;
mod ledger;
mod quantize;
mod score;
mod serve;
mod state;
mod tokenize;
mod train;
mod watermark;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gpt2",
    version,
    about = "GPT-2 in Rust: generate, score, evaluate, tokenize and train"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout.
    Generate(generate::Args),
    /// Score every token of a text: log-probability, rank, entropy.
    Score(score::Args),
    /// Print the GPT-2 token ids of a text.
    Tokenize(tokenize::Args),
    /// The paper's zero-shot evaluation: LAMBADA, WikiText, PTB, bits per byte.
    Eval(eval::EvalArgs),
    /// Perplexity of any text: per token, word and byte.
    Perplexity(eval::PerplexityArgs),
    /// Zero-shot detection of machine text: statistics, calibration, evaluation.
    Detect(detect::Args),
    /// Keyed watermarks: make a key, test a text for it.
    Watermark(watermark::Args),
    /// The provenance ledger: record generations, look texts up.
    #[command(subcommand)]
    Ledger(ledger::Command),
    /// Serve the models over HTTP (OpenAI-style), gated by API keys.
    Serve(serve::Args),
    /// API keys of `gpt2 serve`: create, list, revoke.
    #[command(subcommand)]
    Keys(keys::Command),
    /// The audit log of `gpt2 serve`: every request, newest first.
    Audit(audit::Args),
    /// A server state's schema, and copying a whole state between a
    /// directory and PostgreSQL.
    #[command(subcommand)]
    State(state::Command),
    /// Rewrite a model's weights as f16, bf16, q8_0 or q4_0.
    Quantize(quantize::Args),
    /// Measure prefill, scoring and decode speed in-process.
    Bench(bench::Args),
    /// Turn text files into token files with a train/validation split.
    Prepare(train::PrepareArgs),
    /// Train a model from scratch or fine-tune a checkpoint.
    Train(train::TrainArgs),
    /// Draw a training run's loss curve (log.csv) as a PNG.
    Plot(train::PlotArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line. The library errors already put
/// their cause in their own message (`path: cause`), so a cause that the
/// line ends with is not printed a second time.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.ends_with(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = match cli.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    // Everything runs inside the pool so that parallel kernels start from a
    // worker thread (no cross-thread job injection per kernel call).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(|| dispatch(cli.command))
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Generate(a) => generate::run(a),
        Command::Score(a) => score::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Eval(a) => eval::eval(a),
        Command::Perplexity(a) => eval::perplexity(a),
        Command::Detect(a) => detect::run(a),
        Command::Watermark(a) => watermark::run(a),
        Command::Ledger(a) => ledger::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Keys(a) => keys::run(a),
        Command::Audit(a) => audit::run(a),
        Command::State(a) => state::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Prepare(a) => train::prepare(a),
        Command::Train(a) => train::train(a),
        Command::Plot(a) => train::plot(a),
    }
}
