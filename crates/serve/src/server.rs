//! The run loop: state, engines and the ledger writer started, the
//! listener served until SIGTERM or ctrl-c, then a bounded drain.
//!
//! Order of checks on a request: key (401), body (413/408/400), model
//! (404), scope and model access (403), rate and quota (429), lengths
//! (400), queue (503). Every request except `/health` and the static page
//! leaves one audit row and one metrics observation (see `audit`).

use crate::app::{AppState, ModelEntry};
use crate::engine::{self, EngineConfig};
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::routes::router;
use crate::state::State;
use crate::store::HEARTBEAT_EVERY;
use axum::Router;
use gpt2_generate::Watermark;
use gpt2_model::{Model, Tokenizer};
use gpt2_provenance::roc::Thresholds;
use gpt2_provenance::watermark::{Prf, Watermarker};
use gpt2_provenance::watermark_key::Seeding;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Ledger(#[from] gpt2_provenance::ledger::LedgerError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(String),
}

/// Everything `gpt2 serve` is configured with.
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub state: State,
    /// (name, model); the first is the default for requests without `model`.
    pub models: Vec<(String, Model)>,
    /// Sequences decoded together per model.
    pub slots: usize,
    /// Requests waiting for slots, per model, before 503s.
    pub queue: usize,
    pub threads: usize,
    pub body_limit: usize,
    pub body_timeout: Duration,
    /// Time a client has to send its request line and headers (against
    /// slow-header clients holding connections open).
    pub header_timeout: Duration,
    /// After SIGTERM, how long requests in flight may take to finish
    /// before they are cut off (their audit rows are still written).
    pub drain_timeout: Duration,
    pub step_delay: Duration,
    pub thresholds: Option<Thresholds>,
    /// A trained detector for /v1/detect's verdict.
    pub detector: Option<crate::app::ServedDetector>,
    /// Called with the bound address once the server accepts connections.
    pub on_listening: Box<dyn FnOnce(SocketAddr) + Send>,
}

/// Runs the server until SIGTERM or ctrl-c, then stops accepting, gives
/// the requests in flight up to the drain timeout, and returns.
pub fn run(config: ServeConfig) -> Result<(), ServeError> {
    let io = |e: std::io::Error| ServeError::Io(e.to_string());
    if config.models.is_empty() {
        return Err(ServeError::Io("no model to serve".into()));
    }
    let store = config.state.store()?;
    refuse_damaged("the key database", store.quick_check())?;
    let key = config.state.watermark_key()?;
    if key.seeding == Seeding::LeftHash && key.context_width == 1 {
        eprintln!(
            "warning: {} seeds each step from one token (h = 1): a detect key could learn its \
             green lists; new states use SelfHash over 4 tokens (docs/serve.md)",
            config.state.watermark_key_location()
        );
    }
    let ledger = config.state.ledger()?;
    refuse_damaged(ledger.location(), ledger.quick_check())?;
    let ledger_reader = config.state.ledger()?;
    for l in [&ledger, &ledger_reader] {
        l.set_cache_kib(LEDGER_CACHE_KIB)?;
    }
    let metrics = Arc::new(Metrics::default());
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads.max(1))
            .build()
            .map_err(|e| ServeError::Io(e.to_string()))?,
    );
    let (recorder, recorder_thread) = Recorder::start(ledger, metrics.clone()).map_err(io)?;
    let tokenizer = Tokenizer::gpt2();
    let watermark: Arc<dyn Watermark> = Arc::new(Watermarker::new(Prf::new(
        key.clone(),
        tokenizer.vocab_size(),
    )));
    let mut engines = Vec::new();
    let mut models = Vec::new();
    for (name, model) in config.models {
        let model = Arc::new(model);
        let (queue, handle) = engine::start(
            model.clone(),
            watermark.clone(),
            EngineConfig {
                slots: config.slots.max(1),
                queue: config.queue,
                step_delay: config.step_delay,
            },
            pool.clone(),
            metrics.clone(),
        )
        .map_err(io)?;
        engines.push(handle);
        models.push(ModelEntry { name, model, queue });
    }
    let gate = Gate::new(store);
    report_abandoned(gate.housekeeping()?);
    let state = Arc::new(AppState {
        models,
        gate,
        ledger_reader: Mutex::new(ledger_reader),
        recorder,
        metrics,
        prf: Prf::new(key.clone(), tokenizer.vocab_size()),
        key_id: key.id.clone(),
        tokenizer,
        pool,
        scoring: Arc::new(Semaphore::new(2)),
        thresholds: config.thresholds,
        detector: config.detector,
        body_limit: config.body_limit,
        body_timeout: config.body_timeout,
    });
    start_housekeeping(Arc::downgrade(&state)).map_err(io)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io)?;
    let addr = config.addr;
    let (header_timeout, drain_timeout) = (config.header_timeout, config.drain_timeout);
    let on_listening = config.on_listening;
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Io(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener.local_addr().map_err(io)?;
        on_listening(bound);
        serve(listener, router(state), header_timeout, drain_timeout).await;
        Ok(())
    });
    // Dropping the runtime's tasks drops every request still in flight (each
    // writes its audit row) and with them every queue and recorder handle:
    // the engines drop what they hold and stop, then the ledger writer
    // drains.
    runtime.shutdown_timeout(Duration::from_secs(2));
    for e in engines {
        let _ = e.join();
    }
    let _ = recorder_thread.join();
    result
}

/// Page cache of each of the server's ledger connections (KiB). Lookups
/// and group commits touch few pages; the 128 MiB a bulk import uses would
/// be resident memory held for nothing.
const LEDGER_CACHE_KIB: i64 = 8 * 1024;

fn report_abandoned(charged: usize) {
    if charged > 0 {
        eprintln!(
            "charged {charged} reservations of requests whose server process died mid-request"
        );
    }
}

/// Beats the heartbeat and charges dead servers' reservations every
/// [`HEARTBEAT_EVERY`] until the server stops (the state is dropped).
fn start_housekeeping(state: std::sync::Weak<AppState>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gpt2-housekeeping".into())
        .spawn(move || loop {
            std::thread::sleep(HEARTBEAT_EVERY);
            let Some(state) = state.upgrade() else { return };
            match state.gate.housekeeping() {
                Ok(n) => report_abandoned(n),
                Err(e) => eprintln!("warning: housekeeping of the key database failed: {e}"),
            }
        })
        .map(drop)
}

/// Stops the server, naming the file, when SQLite finds it damaged:
/// nothing is served on a state that cannot be trusted.
fn refuse_damaged<E: std::fmt::Display>(
    what: &str,
    problems: Result<Vec<String>, E>,
) -> Result<(), ServeError> {
    let problems = problems.map_err(|e| ServeError::Io(e.to_string()))?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(ServeError::Io(format!(
        "{what} is damaged (SQLite quick_check: {}); restore it from a backup before serving",
        problems
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

/// Accepts connections until the shutdown signal, then waits up to
/// `drain` for the connections in flight (idle keep-alive ones are closed
/// at once). axum's own `serve` has no header timeout, hence hyper directly.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    drain: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else {
                    // Out of file descriptors and the like: wait, go on.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut signal => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!(
            "the drain timeout of {} s passed: cutting off the requests still in flight",
            drain.as_secs()
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: no new connections; finishing the requests in flight");
}
