//! `gpt2 ledger ...`: record generations in a provenance ledger and look
//! texts up in it (exact copies and edited ones).

use crate::input::read_text;
use anyhow::{anyhow, bail, ensure, Context, Result};
use gpt2_corpus::JsonLines;
use gpt2_model::Tokenizer;
use gpt2_provenance::ledger::{Ledger, Match, NewRecord, Record, DEFAULT_MIN_SCORE};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Record one text (a generation) and print its record id.
    Add(AddArgs),
    /// Record every line of a JSONL file, one transaction per batch.
    Import(ImportArgs),
    /// Find the records matching a text: exact copies, then edited ones.
    Lookup(LookupArgs),
    /// Print one record.
    Show(ShowArgs),
    /// Print what the ledger holds and how it was made.
    Stats(StatsArgs),
    /// Check the file: SQLite's integrity check, then every record's
    /// hashes, signature and index entries.
    Check(StatsArgs),
}

/// The ledger: `--db FILE`, or `--state DIR|URL` for `gpt2 serve`'s.
#[derive(clap::Args)]
struct LedgerPath {
    /// The ledger file (created if missing by add and import).
    #[arg(long, required_unless_present = "state")]
    db: Option<PathBuf>,
    /// A `gpt2 serve` state: a directory (its ledger.sqlite) or a
    /// PostgreSQL URL (the ledger every replica writes).
    #[arg(long, conflicts_with = "db")]
    state: Option<String>,
}

/// Where a ledger is: a SQLite file, or a PostgreSQL state's tables.
#[allow(clippy::large_enum_variant)] // one per command
enum LedgerAt {
    File(PathBuf),
    Postgres(gpt2_db::PgTarget),
}

impl LedgerPath {
    fn resolve(&self) -> Result<LedgerAt> {
        Ok(match (&self.db, &self.state) {
            (Some(db), _) => LedgerAt::File(db.clone()),
            (None, Some(spec)) => match gpt2_serve::State::existing(spec)? {
                gpt2_serve::State::Dir(d) => LedgerAt::File(d.ledger_path()),
                gpt2_serve::State::Postgres(t) => LedgerAt::Postgres(t),
            },
            (None, None) => bail!("give --db FILE or --state DIR|URL"),
        })
    }
}

/// Who and what produced the texts being recorded.
#[derive(clap::Args)]
struct Origin {
    /// The caller (user, API key id) the text was generated for.
    #[arg(long)]
    caller: Option<String>,
    /// The id of the watermark key the text was generated with.
    #[arg(long)]
    key_id: Option<String>,
    /// The model that generated the text.
    #[arg(long)]
    model: Option<String>,
    /// Create the ledger hash-only: no text and no token ids are stored,
    /// only hashes (an existing ledger keeps the mode it was created with).
    #[arg(long)]
    hash_only: bool,
}

#[derive(clap::Args)]
pub struct AddArgs {
    #[command(flatten)]
    db: LedgerPath,
    /// Text file; `-` or nothing reads stdin.
    file: Option<String>,
    #[command(flatten)]
    origin: Origin,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    db: LedgerPath,
    /// One JSON object per line; optional string fields `caller`,
    /// `watermark_key_id` and `model`, and `tokens` (token ids; else the
    /// text is tokenized) override the flags.
    #[arg(long)]
    jsonl: PathBuf,
    /// The field holding the text.
    #[arg(long, default_value = "text")]
    field: String,
    /// Records per transaction.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[command(flatten)]
    origin: Origin,
}

#[derive(clap::Args)]
pub struct LookupArgs {
    #[command(flatten)]
    db: LedgerPath,
    /// Text file; `-` or nothing reads stdin.
    file: Option<String>,
    /// Look up every line of a JSONL file instead, printing one JSON object
    /// per line: `{"line", "matches", "seconds"}`.
    #[arg(long, conflicts_with = "file")]
    jsonl: Option<PathBuf>,
    /// The JSONL field holding the text.
    #[arg(long, default_value = "text", requires = "jsonl")]
    field: String,
    /// The least Jaccard similarity of word 3-grams reported as a match.
    #[arg(long, default_value_t = DEFAULT_MIN_SCORE)]
    min_score: f64,
    /// Print `{"matches": [{"record_id", "score", "exact"}]}`.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    db: LedgerPath,
    /// The record id.
    id: i64,
    /// Print the record as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    db: LedgerPath,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Add(a) => add(a),
        Command::Import(a) => import(a),
        Command::Lookup(a) => lookup(a),
        Command::Show(a) => show(a),
        Command::Stats(a) => stats(a),
        Command::Check(a) => check(a),
    }
}

/// Opens an existing ledger: reading commands never create one.
fn open_existing(at: &LedgerPath) -> Result<Ledger> {
    match at.resolve()? {
        LedgerAt::File(db) => {
            ensure!(db.exists(), "{}: no such ledger", db.display());
            Ok(Ledger::open(db)?)
        }
        LedgerAt::Postgres(t) => Ok(Ledger::open_postgres(&t, false)?),
    }
}

fn open_for_writing(at: &LedgerPath, hash_only: bool) -> Result<Ledger> {
    Ok(match at.resolve()? {
        LedgerAt::File(db) => Ledger::open_with_mode(&db, hash_only)?,
        LedgerAt::Postgres(t) => Ledger::open_postgres(&t, hash_only)?,
    })
}

fn add(a: AddArgs) -> Result<()> {
    let name = a.file.as_deref().unwrap_or("stdin");
    let text = read_text(a.file.as_deref())?;
    ensure!(
        !text.is_empty(),
        "{name}: the text is empty; nothing to record"
    );
    let tokens = Tokenizer::gpt2().encode(&text)?;
    let mut ledger = open_for_writing(&a.db, a.origin.hash_only)?;
    let id = ledger.record(&NewRecord {
        tokens,
        text,
        watermark_key_id: a.origin.key_id,
        caller: a.origin.caller,
        model: a.origin.model,
    })?;
    println!("{id}");
    Ok(())
}

/// The lines of a JSONL file (`gpt2_corpus` reads them, one at a time).
type Lines = JsonLines<std::io::BufReader<std::fs::File>>;

/// The string field `field` of line `line` (required, non-empty).
fn text(lines: &Lines, line: usize, v: &Value, field: &str) -> Result<String> {
    let text = lines.text(line, v, field)?;
    ensure!(!text.is_empty(), "{}: the text is empty", lines.place(line));
    Ok(text.to_string())
}

/// An optional string field: absent or null is `None`.
fn optional(lines: &Lines, line: usize, v: &Value, field: &str) -> Result<Option<String>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => bail!("{}: field {field:?} must be a string", lines.place(line)),
    }
}

/// Optional `tokens`: an array of token ids.
fn tokens(lines: &Lines, line: usize, v: &Value) -> Result<Option<Vec<u32>>> {
    let Some(t) = v.get("tokens") else {
        return Ok(None);
    };
    let bad = || {
        anyhow!(
            "{}: \"tokens\" must be an array of token ids",
            lines.place(line)
        )
    };
    let items = t.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u32>>>()
        .map(Some)
}

/// A progress bar over the input's bytes; hidden when stderr is not a
/// terminal.
fn bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}") {
        bar.set_style(style);
    }
    bar
}

fn import(a: ImportArgs) -> Result<()> {
    ensure!(a.batch >= 1, "--batch must be at least 1");
    let mut lines = JsonLines::open(&a.jsonl)?;
    let total = std::fs::metadata(&a.jsonl).map(|m| m.len()).unwrap_or(0);
    let tokenizer = Tokenizer::gpt2();
    let mut ledger = open_for_writing(&a.db, a.origin.hash_only)?;
    let progress = bar(total);
    let started = Instant::now();
    let (mut committed, mut first_id, mut last_id) = (0usize, None, None);
    let mut batch = Vec::with_capacity(a.batch);
    loop {
        let next = lines
            .next_object()
            .map_err(|e| anyhow!("{e} ({committed} records from earlier lines were committed)"))?;
        if let Some((line, v)) = &next {
            let record = new_record(&lines, *line, v, &a, &tokenizer).map_err(|e| {
                anyhow!("{e} ({committed} records from earlier lines were committed)")
            })?;
            batch.push(record);
        }
        if batch.len() == a.batch || (next.is_none() && !batch.is_empty()) {
            let ids = ledger.record_batch(&batch)?;
            committed += ids.len();
            first_id = first_id.or(ids.first().copied());
            last_id = ids.last().copied().or(last_id);
            batch.clear();
            progress.set_position(lines.bytes_read());
        }
        if next.is_none() {
            break;
        }
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    match (first_id, last_id) {
        (Some(f), Some(l)) => println!(
            "imported {committed} records (ids {f}..{l}) in {seconds:.1} s ({:.0} records/s)",
            committed as f64 / seconds.max(1e-9)
        ),
        _ => bail!("{}: no records (only blank lines)", a.jsonl.display()),
    }
    Ok(())
}

fn new_record(
    lines: &Lines,
    line: usize,
    v: &Value,
    a: &ImportArgs,
    tokenizer: &Tokenizer,
) -> Result<NewRecord> {
    let text = text(lines, line, v, &a.field)?;
    let tokens = match tokens(lines, line, v)? {
        Some(t) => t,
        None => tokenizer
            .encode(&text)
            .with_context(|| format!("{}: tokenizing", lines.place(line)))?,
    };
    Ok(NewRecord {
        tokens,
        watermark_key_id: optional(lines, line, v, "watermark_key_id")?
            .or_else(|| a.origin.key_id.clone()),
        caller: optional(lines, line, v, "caller")?.or_else(|| a.origin.caller.clone()),
        model: optional(lines, line, v, "model")?.or_else(|| a.origin.model.clone()),
        text,
    })
}

/// `"matches": [{"record_id", "score", "exact"}]` with the keys in that
/// order (the library's `Match` serialises its fields in order; a
/// `serde_json::Value` would sort them).
fn matches_field(matches: &[Match]) -> Result<String> {
    Ok(format!("\"matches\":{}", serde_json::to_string(matches)?))
}

fn lookup(a: LookupArgs) -> Result<()> {
    ensure!(
        (0.0..=1.0).contains(&a.min_score),
        "--min-score must be between 0 and 1, not {}",
        a.min_score
    );
    if let Some(jsonl) = &a.jsonl {
        return lookup_lines(&a, jsonl);
    }
    let name = a.file.as_deref().unwrap_or("stdin");
    let text = read_text(a.file.as_deref())?;
    ensure!(
        !text.is_empty(),
        "{name}: the text is empty; nothing to look up"
    );
    let mut ledger = open_existing(&a.db)?;
    let matches = ledger.lookup_with(&text, a.min_score)?;
    if a.json {
        println!("{{{}}}", matches_field(&matches)?);
    } else if matches.is_empty() {
        println!("no match");
    } else {
        for m in &matches {
            let kind = if m.exact { "exact" } else { "similar" };
            println!("record {}  score {:.3}  {kind}", m.record_id, m.score);
        }
    }
    Ok(())
}

/// `lookup --jsonl`: one JSON line per input line, with the time the lookup
/// itself took (for latency measurements without process start-up).
fn lookup_lines(a: &LookupArgs, jsonl: &Path) -> Result<()> {
    let mut ledger = open_existing(&a.db)?;
    let mut lines = JsonLines::open(jsonl)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some((line, v)) = lines.next_object()? {
        let text = text(&lines, line, &v, &a.field)?;
        let started = Instant::now();
        let matches = ledger.lookup_with(&text, a.min_score)?;
        let seconds = started.elapsed().as_secs_f64();
        writeln!(
            out,
            "{{\"line\":{line},{},\"seconds\":{seconds}}}",
            matches_field(&matches)?
        )?;
    }
    Ok(())
}

fn show(a: ShowArgs) -> Result<()> {
    let mut ledger = open_existing(&a.db)?;
    let Some(r) = ledger.get(a.id)? else {
        bail!("{}: no record {}", ledger.location(), a.id);
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_record(&r);
    }
    Ok(())
}

fn print_record(r: &Record) {
    let none = || "-".to_string();
    println!("record     {}", r.id);
    println!("created    {} (unix seconds)", r.created);
    println!("sha256     {}", r.sha256);
    println!("caller     {}", r.caller.clone().unwrap_or_else(none));
    println!(
        "key id     {}",
        r.watermark_key_id.clone().unwrap_or_else(none)
    );
    println!("model      {}", r.model.clone().unwrap_or_else(none));
    println!("n-grams    {}", r.ngrams);
    match (&r.tokens, &r.text) {
        (Some(t), Some(text)) => {
            println!("tokens     {}", t.len());
            println!();
            println!("{text}");
        }
        _ => println!("text       not stored (hash-only ledger)"),
    }
}

fn stats(a: StatsArgs) -> Result<()> {
    let s = open_existing(&a.db)?.stats()?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("ledger     {}", s.path);
    println!("records    {}", s.records);
    println!(
        "mode       {}",
        if s.hash_only {
            "hash-only (no text stored)"
        } else {
            "text and token ids stored"
        }
    );
    println!("schema     version {}", s.schema_version);
    println!(
        "minhash    word {}-grams, {} hashes, {} bands of {}; {} index rows",
        s.ngram, s.hashes, s.bands, s.band_rows, s.lsh_rows
    );
    if let (Some(f), Some(l)) = (s.first_created, s.last_created) {
        println!("created    {f} .. {l} (unix seconds)");
    }
    println!("size       {} bytes (main file)", s.bytes);
    Ok(())
}

fn check(a: StatsArgs) -> Result<()> {
    let mut ledger = open_existing(&a.db)?;
    let problems = ledger.check()?;
    let records = ledger.stats()?.records;
    if a.json {
        println!(
            "{}",
            json!({"ok": problems.is_empty(), "records": records, "problems": problems})
        );
    } else {
        for p in &problems {
            println!("{p}");
        }
    }
    ensure!(
        problems.is_empty(),
        "{}: {} problems found",
        ledger.location(),
        problems.len()
    );
    if !a.json {
        println!("ok: {records} records, integrity and index consistent");
    }
    Ok(())
}
