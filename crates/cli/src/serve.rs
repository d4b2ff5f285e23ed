//! `gpt2 serve`: the gated, OpenAI-compatible HTTP server (crates/serve).

use crate::input::load_model;
use anyhow::{ensure, Context, Result};
use gpt2_provenance::detector::Detector;
use gpt2_provenance::roc::Thresholds;
use gpt2_serve::app::ServedDetector;
use gpt2_serve::{ServeConfig, State};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// The state: keys, audit log, ledger and the watermark key. A
    /// directory (SQLite; created if missing) or a PostgreSQL URL
    /// (`postgres://user@host:port/db`, password from the URL or PGPASSWORD)
    /// that every replica shares.
    #[arg(long)]
    state: String,
    /// A model to serve: `default`, a checkpoint directory, a GGUF file or a
    /// hub id, or NAME=SPEC to choose its API name (repeatable; the first is
    /// the default for requests without `model`).
    #[arg(long = "model", default_value = "default")]
    models: Vec<String>,
    /// Sequences decoded together per model (KV cache slots).
    #[arg(long, default_value_t = 16)]
    slots: usize,
    /// Requests waiting for a slot, per model, before the server answers 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Seconds a client has to send its request body.
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    /// Seconds a client has to send its request line and headers.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds requests in flight may take to finish after SIGTERM before
    /// they are cut off.
    #[arg(long, default_value_t = 10)]
    drain_timeout: u64,
    /// Detector thresholds (`gpt2 detect calibrate`) for the verdict of
    /// /v1/detect.
    #[arg(long)]
    thresholds: Option<PathBuf>,
    /// A trained detector (`gpt2 detect train`): /v1/detect reports its
    /// calibrated verdict (a feature detector's for the model it was
    /// trained with; a classifier's for every text).
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Milliseconds to sleep after every decode step (for tests of a busy
    /// server).
    #[arg(long, default_value_t = 0, hide = true)]
    step_delay_ms: u64,
}

/// `NAME=SPEC`, or SPEC named by its last path component.
fn model_name(arg: &str) -> (String, String) {
    if let Some((name, spec)) = arg.split_once('=') {
        return (name.to_string(), spec.to_string());
    }
    let name = std::path::Path::new(arg)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.to_string());
    (name, arg.to_string())
}

pub fn run(a: Args) -> Result<()> {
    ensure!(a.slots >= 1, "--slots must be at least 1");
    ensure!(a.queue >= 1, "--queue must be at least 1");
    // Checked before the models load: a wrong detector fails at once.
    let detector = a
        .detector
        .as_ref()
        .map(|dir| -> Result<ServedDetector> {
            let detector = Detector::load(dir)?;
            let Some(model) = detector.statistics_model() else {
                return Ok(ServedDetector {
                    detector,
                    statistics_of: None,
                });
            };
            let mut served = a.models.iter().map(|m| model_name(m));
            let Some((name, _)) = served.find(|(_, spec)| spec == model) else {
                anyhow::bail!(
                    "{}: the detector was trained on the statistics of --model {model}, which this server does not serve",
                    dir.display(),
                );
            };
            Ok(ServedDetector {
                detector,
                statistics_of: Some(name),
            })
        })
        .transpose()?;
    let state = State::create(&a.state)?;
    let mut models = Vec::new();
    for arg in &a.models {
        let (name, spec) = model_name(arg);
        ensure!(
            !models.iter().any(|(n, _)| n == &name),
            "two models are named {name:?}; use NAME=SPEC"
        );
        let model = load_model(&spec).with_context(|| format!("loading the model {spec}"))?;
        models.push((name, model));
    }
    let thresholds = a
        .thresholds
        .as_ref()
        .map(|p| -> Result<Thresholds> {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not thresholds", p.display()))
        })
        .transpose()?;
    let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
    gpt2_serve::run(ServeConfig {
        addr: a.addr,
        state,
        models,
        slots: a.slots,
        queue: a.queue,
        threads: rayon::current_num_threads(),
        body_limit: a.max_body,
        body_timeout: Duration::from_secs(a.body_timeout.max(1)),
        header_timeout: Duration::from_secs(a.header_timeout.max(1)),
        drain_timeout: Duration::from_secs(a.drain_timeout),
        step_delay: Duration::from_millis(a.step_delay_ms),
        thresholds,
        detector,
        on_listening: Box::new(move |addr| {
            eprintln!(
                "gpt2 serve: listening on http://{addr} (models: {})",
                names.join(", ")
            );
            let _ = std::io::stderr().flush();
        }),
    })?;
    eprintln!("gpt2 serve: stopped");
    Ok(())
}
