//! Continuous batching: one thread owns a model's KV cache (a fixed number
//! of sequence slots) and runs every sequence in flight through shared
//! forward passes. Between two decode steps finished sequences leave and
//! queued requests join: a joining request's prompt is prefilled in the same
//! forward pass as the others' next tokens (the model's `Batch` takes
//! segments of any length), and its other samples copy the prompt's slot.
//!
//! Requests arrive over a bounded queue (full: the caller answers 503);
//! results leave over each request's own channel, as text pieces while they
//! become final and one `Done` per sample. A request whose receiver is gone
//! (the client hung up) is dropped between steps.
//!
//! Per sample this is the loop of `gpt2_generate::Generator` (the same
//! sampler, seeded the same way, so a seed gives the same text as
//! `gpt2 generate --seed`), plus the watermark, which depends only on each
//! sequence's own history, so one processor serves every slot.

use crate::metrics::Metrics;
use gpt2_generate::stop::{final_len, find_stop};
use gpt2_generate::utf8::Utf8Stream;
use gpt2_generate::{FinishReason, LogitsProcessor, Sampler, SamplingParams, TokenChooser};
use gpt2_model::kernels::log_softmax_stats;
use gpt2_model::score::top_k;
use gpt2_model::{Batch, KvCache, Model, Scratch, Tokenizer, END_OF_TEXT};
use gpt2_provenance::watermark::{GumbelChooser, KgwProcessor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// One prompt to complete `n` times.
pub struct Job {
    /// Token ids, non-empty (an empty prompt is `[<|endoftext|>]`), and
    /// shorter than the context.
    pub prompt: Vec<u32>,
    pub n: usize,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Per-token log-probabilities with this many alternatives.
    pub logprobs: Option<usize>,
    pub watermark: bool,
    /// Sample `i` is reported as choice `index_base + i` (several prompts
    /// of one request share one channel).
    pub index_base: usize,
    pub events: UnboundedSender<Event>,
}

/// A generated token with its model log-probability (before temperature
/// and filtering) and the most likely alternatives.
#[derive(Debug, Clone)]
pub struct TokenOut {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug)]
pub enum Event {
    /// Sample `index`'s next final text, and the tokens generated since the
    /// last piece (alternatives only when asked for).
    Piece {
        index: usize,
        text: String,
        tokens: Vec<TokenOut>,
    },
    /// Sample `index` is finished; `text` is all of it.
    Done {
        index: usize,
        finish: FinishReason,
        tokens: Vec<u32>,
        text: String,
    },
    Failed(String),
}

/// The watermark, attached per step to whichever sequence asks for it.
pub enum Watermarker {
    Kgw(KgwProcessor),
    Gumbel(GumbelChooser),
}

/// The producer's end of the queue.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    /// Jobs submitted and not yet running (in the channel, or taken by the
    /// engine and waiting for slots): the bound is on this.
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
/// dropped and the sequences in flight are finished.
pub fn start(
    model: Arc<Model>,
    watermarker: Watermarker,
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
        .spawn(move || Engine::new(&model, watermarker, config, m, d).run(rx, &pool))?;
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

/// One sample in flight.
struct Seq {
    job: usize,
    index: usize,
    slot: usize,
    sampler: Sampler,
    /// Prompt then generated tokens: what the watermark and the repetition
    /// penalty see.
    history: Vec<u32>,
    prompt_len: usize,
    tokens: Vec<u32>,
    pending: Vec<TokenOut>,
    utf8: Utf8Stream,
    text: String,
    emitted: usize,
    /// The token to feed next (None right after the prompt's prefill).
    next: Option<u32>,
    finish: Option<FinishReason>,
}

struct Running {
    job: Job,
    max_stop: usize,
    /// Samples not yet finished.
    live: usize,
}

struct Engine<'m> {
    model: &'m Model,
    tokenizer: Tokenizer,
    watermarker: Watermarker,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    depth: Arc<AtomicUsize>,
    cache: KvCache,
    scratch: Scratch,
    batch: Batch,
    work: Vec<f32>,
    free: Vec<usize>,
    jobs: Vec<Option<Running>>,
    seqs: Vec<Seq>,
    /// A job taken from the queue that waits for enough free slots (FIFO:
    /// nothing overtakes it).
    waiting: Option<Job>,
}

impl<'m> Engine<'m> {
    fn new(
        model: &'m Model,
        watermarker: Watermarker,
        config: EngineConfig,
        metrics: Arc<Metrics>,
        depth: Arc<AtomicUsize>,
    ) -> Engine<'m> {
        Engine {
            depth,
            model,
            tokenizer: Tokenizer::gpt2(),
            watermarker,
            cache: model.new_cache(config.slots),
            free: (0..config.slots).rev().collect(),
            config,
            metrics,
            scratch: Scratch::default(),
            batch: Batch::default(),
            work: vec![0.0; model.config().vocab_size],
            jobs: Vec::new(),
            seqs: Vec::new(),
            waiting: None,
        }
    }

    /// Runs until the queue is closed and drained. Each step enters the
    /// pool on its own (the engine never holds a pool thread while idle,
    /// which would starve the scoring tasks that share the pool).
    fn run(&mut self, rx: Receiver<Job>, pool: &rayon::ThreadPool) {
        let mut open = true;
        while open || !self.seqs.is_empty() || self.waiting.is_some() {
            open = self.admit(&rx, open);
            if self.seqs.is_empty() {
                continue;
            }
            if let Err(e) = pool.install(|| self.step()) {
                self.fail_all(&format!("the model failed: {e}"));
            }
            if !self.config.step_delay.is_zero() {
                std::thread::sleep(self.config.step_delay);
            }
        }
    }

    /// Takes jobs from the queue while their samples fit in free slots;
    /// blocks when there is nothing to run. Returns whether the queue is
    /// still open.
    fn admit(&mut self, rx: &Receiver<Job>, mut open: bool) -> bool {
        loop {
            let job = match self.waiting.take() {
                Some(j) => j,
                None if !open => return false,
                None if self.seqs.is_empty() => {
                    // Idle: wait, waking now and then to notice a closed queue.
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(j) => j,
                        Err(RecvTimeoutError::Timeout) => return open,
                        Err(RecvTimeoutError::Disconnected) => return false,
                    }
                }
                None => match rx.try_recv() {
                    Ok(j) => j,
                    Err(std::sync::mpsc::TryRecvError::Empty) => return open,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        continue;
                    }
                },
            };
            if job.events.is_closed() {
                self.dequeued();
                continue; // the client left while it was queued
            }
            if job.n > self.free.len() {
                self.waiting = Some(job);
                return open;
            }
            self.dequeued();
            self.join(job);
        }
    }

    /// A job leaves the queue (it runs now, or its client is gone).
    fn dequeued(&self) {
        self.depth.fetch_sub(1, Ordering::SeqCst);
        self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// Gives the job's samples their slots; the prompt is prefilled in the
    /// next step.
    fn join(&mut self, job: Job) {
        let id = match self.jobs.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.jobs.push(None);
                self.jobs.len() - 1
            }
        };
        let vocab = self.model.config().vocab_size;
        for index in 0..job.n {
            // invariant: admit checked that n slots are free.
            let slot = self.free.pop().unwrap_or_default();
            self.cache.reset(slot);
            let mut sampler = Sampler::new(job.sampling, job.seed, index as u64, vocab);
            sampler.observe(&job.prompt);
            self.seqs.push(Seq {
                job: id,
                index,
                slot,
                sampler,
                history: job.prompt.clone(),
                prompt_len: job.prompt.len(),
                tokens: Vec::with_capacity(job.max_tokens),
                pending: Vec::new(),
                utf8: Utf8Stream::default(),
                text: String::new(),
                emitted: 0,
                next: None,
                finish: None,
            });
        }
        let max_stop = job.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        self.jobs[id] = Some(Running {
            live: job.n,
            job,
            max_stop,
        });
    }

    /// One forward pass over every sequence: the prompts of jobs that just
    /// joined (once per job) and one token of every other sequence; then one
    /// new token for each.
    fn step(&mut self) -> gpt2_model::Result<()> {
        self.drop_abandoned();
        if self.seqs.is_empty() {
            return Ok(());
        }
        // Which logits row each sequence samples from.
        let mut rows = Vec::with_capacity(self.seqs.len());
        self.batch.clear();
        for s in &self.seqs {
            let Some(run) = self.jobs[s.job].as_ref() else {
                rows.push(usize::MAX);
                continue;
            };
            match s.next {
                Some(t) => {
                    rows.push(self.batch.len());
                    self.batch.push(s.slot, std::slice::from_ref(&t));
                }
                // The job's first sample prefills; its siblings share its row.
                None if s.index == 0 => {
                    rows.push(self.batch.len());
                    self.batch.push(s.slot, &run.job.prompt);
                }
                None => rows.push(usize::MAX),
            }
        }
        self.metrics
            .observe_batch(self.batch.len(), self.batch.rows());
        let logits =
            self.model
                .next_token_logits(&self.batch, &mut self.cache, &mut self.scratch)?;
        let vocab = self.model.config().vocab_size;
        // Siblings copy the prefilled slot and take its row.
        let mut first_row: Vec<(usize, usize, usize)> = Vec::new(); // (job, slot, row)
        for (i, s) in self.seqs.iter().enumerate() {
            if s.next.is_none() && s.index == 0 {
                first_row.push((s.job, s.slot, rows[i]));
            }
        }
        for (i, s) in self.seqs.iter().enumerate() {
            if s.next.is_none() && s.index > 0 {
                if let Some(&(_, from, row)) = first_row.iter().find(|f| f.0 == s.job) {
                    self.cache.copy_slot(from, s.slot);
                    rows[i] = row;
                }
            }
        }
        for (i, &row) in rows.iter().enumerate() {
            if row == usize::MAX {
                continue;
            }
            let raw = &logits[row * vocab..(row + 1) * vocab];
            let s = &mut self.seqs[i];
            // invariant: every sequence's job is live until it leaves below.
            let Some(run) = self.jobs[s.job].as_ref() else {
                continue;
            };
            let token = pick(
                raw,
                s,
                run.job.logprobs,
                run.job.watermark,
                &mut self.watermarker,
                &mut self.work,
                self.tokenizer.vocab_size(),
            );
            accept(s, token, run, &self.tokenizer, self.model.config().n_ctx);
            emit(s, run);
        }
        self.retire_finished();
        Ok(())
    }

    /// Finishes the samples of clients that hung up.
    fn drop_abandoned(&mut self) {
        for run in self.jobs.iter_mut() {
            if run.as_ref().is_some_and(|r| r.job.events.is_closed()) {
                *run = None;
            }
        }
        let jobs = &self.jobs;
        let free = &mut self.free;
        self.seqs.retain(|s| {
            let keep = jobs[s.job].is_some();
            if !keep {
                free.push(s.slot);
            }
            keep
        });
    }

    /// Sends `Done` for finished samples and frees their slots.
    fn retire_finished(&mut self) {
        let mut i = 0;
        while i < self.seqs.len() {
            if self.seqs[i].finish.is_none() {
                i += 1;
                continue;
            }
            let s = self.seqs.swap_remove(i);
            self.free.push(s.slot);
            let n_tokens = s.tokens.len() as u64;
            self.metrics
                .tokens_out
                .fetch_add(n_tokens, Ordering::Relaxed);
            if let Some(run) = self.jobs[s.job].as_mut() {
                let _ = run.job.events.send(Event::Done {
                    index: run.job.index_base + s.index,
                    finish: s.finish.unwrap_or(FinishReason::Length),
                    tokens: s.tokens,
                    text: s.text,
                });
                run.live -= 1;
                if run.live == 0 {
                    self.jobs[s.job] = None;
                }
            }
        }
    }

    fn fail_all(&mut self, message: &str) {
        for run in self.jobs.iter_mut().filter_map(Option::take) {
            let _ = run.job.events.send(Event::Failed(message.to_string()));
        }
        for s in self.seqs.drain(..) {
            self.free.push(s.slot);
        }
    }
}

/// Samples the next token of `s` from its raw logits: the watermark, then
/// the sampler (repetition penalty, temperature, top-k, top-p, draw).
fn pick(
    raw: &[f32],
    s: &mut Seq,
    logprobs: Option<usize>,
    watermark: bool,
    wm: &mut Watermarker,
    work: &mut [f32],
    tokenizer_vocab: usize,
) -> u32 {
    let (max, lse) = log_softmax_stats(raw, work);
    work.copy_from_slice(raw);
    let history = &s.history;
    if watermark {
        if let Watermarker::Kgw(p) = wm {
            p.process(history, work);
        }
    }
    // Ids the tokenizer cannot decode (padded vocabularies) are never drawn.
    if work.len() > tokenizer_vocab {
        work[tokenizer_vocab..].fill(f32::NEG_INFINITY);
    }
    let token = match wm {
        Watermarker::Gumbel(c) if watermark => s
            .sampler
            .sample_choosing(work, &mut |cands, w| c.choose(history, cands, w)),
        _ => s.sampler.sample(work),
    };
    let top = match logprobs {
        Some(k) if k > 0 => top_k(raw, k)
            .into_iter()
            .map(|i| (i, raw[i as usize] - max - lse))
            .collect(),
        _ => Vec::new(),
    };
    s.pending.push(TokenOut {
        id: token,
        logprob: raw[token as usize] - max - lse,
        top,
    });
    token
}

/// Appends `token` to the sample and decides whether it is finished: at
/// `<|endoftext|>`, a stop string, `max_tokens`, or a full context.
fn accept(s: &mut Seq, token: u32, run: &Running, tokenizer: &Tokenizer, n_ctx: usize) {
    if token == END_OF_TEXT {
        s.pending.retain(|t| t.id != END_OF_TEXT);
        s.utf8.finish(&mut s.text);
        s.finish = Some(FinishReason::Stop);
        return;
    }
    s.tokens.push(token);
    s.history.push(token);
    s.sampler.observe(std::slice::from_ref(&token));
    s.next = Some(token);
    let before = s.text.len();
    s.utf8.push(
        tokenizer.token_bytes(token).unwrap_or_default(),
        &mut s.text,
    );
    if let Some(cut) = find_stop(&s.text, before.saturating_sub(run.max_stop), &run.job.stop) {
        s.text.truncate(cut);
        s.finish = Some(FinishReason::Stop);
        return;
    }
    if s.tokens.len() >= run.job.max_tokens || s.prompt_len + s.tokens.len() >= n_ctx {
        s.utf8.finish(&mut s.text);
        s.finish = Some(FinishReason::Length);
    }
}

/// Sends what is final: all of a finished sample's text, else everything
/// but a tail that could still grow into a stop string.
fn emit(s: &mut Seq, run: &Running) {
    let end = final_len(&s.text, s.finish.is_some(), run.max_stop, &run.job.stop);
    if end > s.emitted || !s.pending.is_empty() {
        // Text already sent is never cut (a stop string's start is always
        // held back), so `emitted <= end`; `get` keeps a mistake here from
        // becoming a panic.
        let text = s.text.get(s.emitted..end).unwrap_or_default().to_string();
        let _ = run.job.events.send(Event::Piece {
            index: run.job.index_base + s.index,
            text,
            tokens: std::mem::take(&mut s.pending),
        });
        s.emitted = end.max(s.emitted);
    }
}
