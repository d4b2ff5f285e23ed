//! Continuous batching for one model: a thread that owns a
//! `gpt2_generate::Decoder` (the same loop `gpt2 generate` drives, so a
//! seed gives the same text here as there) and feeds it requests.
//!
//! Requests arrive over a bounded queue (full: the caller answers 503);
//! results leave over each request's own channel, as text pieces while they
//! become final and one `Done` per choice. Between two steps the engine
//! drops the sequences of clients that hung up, then hands free slots to
//! waiting requests in turn, one prompt's worth (or what fits) at a time:
//! a request with more choices than slots is served across steps, and no
//! request waits for another to be admitted whole.

use crate::metrics::Metrics;
use gpt2_generate::{
    Decoder, Event as DecodeEvent, FinishReason, SamplingParams, SeqSpec, Watermark,
};
use gpt2_model::Model;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

pub use gpt2_generate::TokenOut;

/// One request: every prompt completed `n` times. Choice `p * n + i` is
/// sample `i` of prompt `p`, drawn from ChaCha8 stream `i`.
pub struct Job {
    /// Token ids as fed: non-empty (an empty prompt is `[<|endoftext|>]`)
    /// and shorter than the context.
    pub prompts: Vec<Vec<u32>>,
    pub n: usize,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub stop: Arc<[String]>,
    /// Per-token log-probabilities with this many alternatives.
    pub logprobs: Option<usize>,
    pub watermark: bool,
    /// `logit_bias` and the presence and frequency penalties.
    pub adjust: gpt2_generate::LogitAdjust,
    pub events: UnboundedSender<Event>,
    /// Tokens generated so far, for the request's audit row if its client
    /// leaves before the end.
    pub progress: Arc<AtomicU64>,
}

impl Job {
    fn choices(&self) -> usize {
        self.prompts.len() * self.n
    }
}

#[derive(Debug)]
pub enum Event {
    /// Choice `index`'s next final text, and the tokens generated since the
    /// last piece (alternatives only when asked for).
    Piece {
        index: usize,
        text: String,
        tokens: Vec<TokenOut>,
    },
    /// Choice `index` is finished; `text` is all of it.
    Done {
        index: usize,
        finish: FinishReason,
        tokens: Vec<u32>,
        text: String,
    },
    Failed(String),
}

/// The producer's end of the queue.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    /// Requests submitted and not yet wholly admitted (in the channel, or
    /// taken by the engine and waiting for slots): the bound is on this.
    depth: Arc<AtomicUsize>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

pub enum SubmitError {
    Full,
    Closed,
}

impl Queue {
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        // Counted before sending so the engine never decrements first.
        if self.depth.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Full);
        }
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(job).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::SeqCst);
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => SubmitError::Full,
                TrySendError::Disconnected(_) => SubmitError::Closed,
            }
        })
    }
}

pub struct EngineConfig {
    pub slots: usize,
    pub queue: usize,
    /// Sleep after every decode step (tests use it to hold slots busy).
    pub step_delay: Duration,
}

/// Starts the engine thread for `model`; it runs until every `Queue` is
/// dropped and the sequences in flight are finished or abandoned.
pub fn start(
    model: Arc<Model>,
    watermark: Arc<dyn Watermark>,
    config: EngineConfig,
    pool: Arc<rayon::ThreadPool>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Queue, std::thread::JoinHandle<()>)> {
    // The channel holds at most `queue` jobs since `depth` counts them too.
    let (tx, rx) = std::sync::mpsc::sync_channel(config.queue.max(1));
    let depth = Arc::new(AtomicUsize::new(0));
    let capacity = config.queue;
    let (m, d) = (metrics.clone(), depth.clone());
    let handle = std::thread::Builder::new()
        .name("gpt2-engine".into())
        .spawn(move || {
            let decoder = Decoder::new(&model, config.slots.max(1));
            Engine {
                decoder,
                watermark,
                step_delay: config.step_delay,
                metrics: m,
                depth: d,
                jobs: HashMap::new(),
                waiting: VecDeque::new(),
                next_id: 0,
            }
            .run(rx, &pool)
        })?;
    Ok((
        Queue {
            tx,
            depth,
            capacity,
            metrics,
        },
        handle,
    ))
}

/// A request in the engine, until its last choice is done.
struct Running {
    job: Job,
    /// Choices handed to the decoder so far (the next one's index).
    admitted: usize,
    /// Choices not yet done.
    live: usize,
}

/// Choices per request are at most 128 (the API's limit); a tag carries
/// the request's id above them.
const CHOICE_BITS: u32 = 16;

struct Engine<'m> {
    decoder: Decoder<'m>,
    watermark: Arc<dyn Watermark>,
    step_delay: Duration,
    metrics: Arc<Metrics>,
    depth: Arc<AtomicUsize>,
    jobs: HashMap<u64, Running>,
    /// Requests with choices not yet admitted, in turn order.
    waiting: VecDeque<u64>,
    next_id: u64,
}

impl Engine<'_> {
    /// Runs until the queue is closed and nothing is left to run. Each step
    /// enters the pool on its own (the engine never holds a pool thread
    /// while idle, which would starve the scoring tasks that share it).
    fn run(&mut self, rx: Receiver<Job>, pool: &rayon::ThreadPool) {
        let mut open = true;
        loop {
            open = self.receive(&rx, open);
            self.drop_abandoned();
            self.admit();
            if self.decoder.is_idle() {
                if !open && self.waiting.is_empty() {
                    return;
                }
                continue;
            }
            let result = pool.install(|| self.step());
            if let Err(e) = result {
                self.fail_all(&format!("the model failed: {e}"));
            }
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
        }
    }

    /// Takes every request the queue holds; blocks (briefly, to notice a
    /// closed queue) when there is nothing else to do. Returns whether the
    /// queue is still open.
    fn receive(&mut self, rx: &Receiver<Job>, mut open: bool) -> bool {
        while open {
            let idle = self.decoder.is_idle() && self.waiting.is_empty();
            let job = if idle {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => return true,
                    Err(RecvTimeoutError::Disconnected) => return false,
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => return true,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        continue;
                    }
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            let live = job.choices();
            self.jobs.insert(
                id,
                Running {
                    job,
                    admitted: 0,
                    live,
                },
            );
            self.waiting.push_back(id);
        }
        open
    }

    /// Forgets the requests of clients that hung up, running or waiting.
    fn drop_abandoned(&mut self) {
        let gone: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, r)| r.job.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            if self.waiting.contains(id) {
                self.dequeued();
            }
            self.jobs.remove(id);
        }
        self.waiting.retain(|id| !gone.contains(id));
        let jobs = &self.jobs;
        self.decoder
            .retain(|tag| jobs.contains_key(&(tag >> CHOICE_BITS)));
    }

    /// Hands free slots to waiting requests in turn: the front request gets
    /// the rest of its current prompt's choices (or what fits), then goes
    /// to the back if it has more.
    fn admit(&mut self) {
        while self.decoder.free_slots() > 0 {
            let Some(id) = self.waiting.pop_front() else {
                return;
            };
            let Some(run) = self.jobs.get_mut(&id) else {
                continue;
            };
            let n = run.job.n;
            let prompt = run.admitted / n;
            let first = run.admitted % n;
            let count = (n - first).min(self.decoder.free_slots());
            let specs = (first..first + count)
                .map(|i| SeqSpec {
                    tag: (id << CHOICE_BITS) | (prompt * n + i) as u64,
                    max_tokens: run.job.max_tokens,
                    sampling: run.job.sampling,
                    seed: run.job.seed,
                    stream: i as u64,
                    stop: run.job.stop.clone(),
                    top_logprobs: run.job.logprobs.unwrap_or(0),
                    watermark: run.job.watermark.then(|| self.watermark.clone()),
                    adjust: run.job.adjust.clone(),
                    ignore_eos: false,
                })
                .collect();
            if let Err(e) = self.decoder.join(&run.job.prompts[prompt], specs) {
                // The handler checked the prompts; this is a bug, not input.
                let _ = run.job.events.send(Event::Failed(e.to_string()));
                self.jobs.remove(&id);
                self.decoder.retain(|tag| tag >> CHOICE_BITS != id);
                self.dequeued();
                continue;
            }
            run.admitted += count;
            if run.admitted < run.job.choices() {
                self.waiting.push_back(id);
            } else {
                self.dequeued();
            }
        }
    }

    /// A request leaves the queue (wholly admitted, or its client is gone).
    fn dequeued(&self) {
        self.depth.fetch_sub(1, Ordering::SeqCst);
        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }

    fn step(&mut self) -> Result<(), gpt2_generate::GenerateError> {
        let jobs = &mut self.jobs;
        let metrics = &self.metrics;
        let stats = self.decoder.step(&mut |e| route(jobs, metrics, e))?;
        self.metrics.observe_batch(stats.sequences, stats.rows);
        Ok(())
    }

    fn fail_all(&mut self, message: &str) {
        for (_, run) in self.jobs.drain() {
            let _ = run.job.events.send(Event::Failed(message.to_string()));
        }
        let waiting = std::mem::take(&mut self.waiting);
        for _ in waiting {
            self.dequeued();
        }
        self.decoder.retain(|_| false);
    }
}

/// Sends one decoder event to its request.
fn route(jobs: &mut HashMap<u64, Running>, metrics: &Metrics, e: DecodeEvent<'_>) {
    let tag = match &e {
        DecodeEvent::Token { tag, .. } | DecodeEvent::Done { tag, .. } => *tag,
    };
    let id = tag >> CHOICE_BITS;
    let index = (tag & ((1 << CHOICE_BITS) - 1)) as usize;
    let Some(run) = jobs.get_mut(&id) else {
        return;
    };
    match e {
        DecodeEvent::Token { token, text, .. } => {
            run.job.progress.fetch_add(1, Ordering::Relaxed);
            metrics.tokens_out.fetch_add(1, Ordering::Relaxed);
            let _ = run.job.events.send(Event::Piece {
                index,
                text: text.to_string(),
                tokens: vec![token.clone()],
            });
        }
        DecodeEvent::Done {
            text, completion, ..
        } => {
            if !text.is_empty() {
                let _ = run.job.events.send(Event::Piece {
                    index,
                    text: text.to_string(),
                    tokens: Vec::new(),
                });
            }
            let _ = run.job.events.send(Event::Done {
                index,
                finish: completion.finish_reason,
                tokens: completion.tokens,
                text: completion.text,
            });
            run.live -= 1;
            if run.live == 0 {
                jobs.remove(&id);
            }
        }
    }
}
