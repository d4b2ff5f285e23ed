//! `POST /v1/completions`: validation, the engine round trip, the ledger
//! record, and the response (one JSON body, or server-sent events).
//!
//! The ledger comes first: a completion's text is committed to the ledger
//! before the response that carries it is written. A stream commits the
//! text a client has received so far before each batch of events, so the
//! ledger holds every prefix a client saw (the last record is the whole
//! completion); a `kill -9` at any moment cannot leave a client holding
//! text the ledger lacks.

use crate::api::{self, ApiError, PromptInput, Validated};
use crate::app::{AppState, ModelEntry};
use crate::audit::RequestAudit;
use crate::engine::{Event, Job, SubmitError, TokenOut};
use crate::gate::{db_failure, internal};
use crate::sse::{self, Chunk};
use crate::store::Scope;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use gpt2_generate::FinishReason;
use gpt2_model::score::{Scorer, Span, TokenScore};
use gpt2_model::END_OF_TEXT;
use gpt2_provenance::ledger::NewRecord;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc::{self, UnboundedReceiver};

pub async fn completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut audit = RequestAudit::new(s.clone(), "/v1/completions");
    let result = handle(&s, &headers, body, &mut audit).await;
    audit.respond(result)
}

/// Everything a response needs besides the generated text.
struct Context {
    id: String,
    created: u64,
    model: String,
    req: Validated,
    /// Per prompt: its token ids as given (possibly empty).
    prompts: Vec<Vec<u32>>,
    /// Per prompt, when echo and logprobs are asked for: its scores.
    prompt_scores: Vec<Vec<TokenScore>>,
    seed: u64,
    watermark_key_id: Option<String>,
    caller: String,
    /// Whether the output goes to the ledger (see `Mode::records`).
    records: bool,
}

impl Context {
    fn choices(&self) -> usize {
        self.prompts.len() * self.req.n
    }

    fn prompt_of(&self, choice: usize) -> &[u32] {
        &self.prompts[choice / self.req.n]
    }
}

/// Most alternatives per prompt position (echo with logprobs) for a key
/// without `admin`: the one lm-evaluation-harness asks for, to tell
/// whether a continuation is the greedy one.
pub const MAX_PROMPT_ALTERNATIVES: usize = 1;

/// What a completion request does, which decides the scope it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `max_tokens: 0` with echo: the prompt's scores alone.
    Score,
    /// lm-evaluation-harness's loglikelihood request (echo, `max_tokens:
    /// 1`) from a key with `score` and not `generate`: the prompt's scores
    /// and one watermarked token, which is not text and is not recorded.
    Loglikelihood,
    Generate,
}

impl Mode {
    fn of(req: &Validated, key: &crate::store::KeyInfo) -> Mode {
        if req.max_tokens == 0 {
            Mode::Score
        } else if req.echo
            && req.max_tokens == 1
            && key.has_scope(Scope::Score)
            && !key.has_scope(Scope::Generate)
        {
            Mode::Loglikelihood
        } else {
            Mode::Generate
        }
    }

    fn scope(self) -> Scope {
        match self {
            Mode::Score | Mode::Loglikelihood => Scope::Score,
            Mode::Generate => Scope::Generate,
        }
    }

    /// Whether the output goes to the ledger.
    fn records(self) -> bool {
        self == Mode::Generate
    }
}

async fn handle(
    s: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    audit: &mut RequestAudit,
) -> Result<Response, ApiError> {
    let info = &mut audit.info;
    let key = s.gate.authenticate(headers)?;
    info.key_id = Some(key.id.clone());
    let body = s.read_body(body).await?;
    let req = api::parse_completion(&body)?;
    let entry = s.model(&key, req.model.as_deref())?;
    info.model = Some(entry.name.clone());
    let mode = check_access(s, &key, &req, info)?;
    s.gate.check_quota(&key)?;
    if let Some(user) = &req.user {
        // The end user the key holder names, for the audit trail.
        info.add_note(&format!("user={user}"));
    }
    let prompts = tokenize(s, entry, &req)?;
    let prompt_tokens: u64 = prompts.iter().map(|p| p.len() as u64).sum();
    let most = prompt_tokens + (prompts.len() * req.best_of * req.max_tokens) as u64;
    audit.admit(&key, prompt_tokens, most)?;
    s.metrics
        .tokens_in
        .fetch_add(audit.info.prompt_tokens, Ordering::Relaxed);
    let prompt_scores = if req.echo && req.logprobs.is_some() {
        score_prompts(s, entry, &prompts, req.logprobs.unwrap_or(0)).await?
    } else {
        Vec::new()
    };
    let ctx = Context {
        id: format!("cmpl-{}", random_hex()),
        created: (crate::store::now_ms() / 1000) as u64,
        model: entry.name.clone(),
        seed: req.seed.unwrap_or_else(rand::random),
        watermark_key_id: req.watermark.then(|| s.key_id.clone()),
        caller: key.id.clone(),
        records: mode.records(),
        prompts,
        prompt_scores,
        req,
    };
    if ctx.req.max_tokens == 0 {
        return Ok(axum::Json(body_json(
            &ctx,
            &vec![Sample::default(); ctx.choices()],
            &[],
            0,
        ))
        .into_response());
    }
    let rx = submit(entry, &ctx, audit)?;
    if ctx.req.stream {
        return Ok(start_stream(s.clone(), ctx, rx, audit.hand_off()));
    }
    let samples = collect(rx, ctx.prompts.len() * ctx.req.best_of).await?;
    // Every sample drawn is charged, including those best_of leaves out.
    audit.info.completion_tokens = samples.iter().map(|x| x.ids.len() as u64).sum();
    let samples = best_of(samples, ctx.req.best_of, ctx.req.n);
    let records: Vec<NewRecord> = samples
        .iter()
        .filter(|x| !x.text.is_empty() && ctx.records)
        .map(|x| record(&ctx, x))
        .collect();
    let ids = s.recorder.record(records).await.map_err(|e| {
        db_failure(
            "the ledger could not record the completion, so it is not returned",
            e,
        )
    })?;
    let mut ids = ids.into_iter();
    let ledger_ids: Vec<Option<i64>> = samples
        .iter()
        .map(|x| {
            if x.text.is_empty() || !ctx.records {
                None
            } else {
                ids.next()
            }
        })
        .collect();
    let generated = audit.info.completion_tokens as usize;
    Ok(axum::Json(body_json(&ctx, &samples, &ledger_ids, generated)).into_response())
}

/// The scope checks of a completion request: its mode's scope, `admin`
/// for unwatermarked output and for more than one alternative per prompt
/// position (docs/serve.md, "What a key can learn").
fn check_access(
    s: &AppState,
    key: &crate::store::KeyInfo,
    req: &Validated,
    info: &mut crate::audit::AuditInfo,
) -> Result<Mode, ApiError> {
    let mode = Mode::of(req, key);
    s.gate.require_scope(key, mode.scope())?;
    if !req.watermark {
        s.gate.require_scope(key, Scope::Admin).map_err(|mut e| {
            e.message = "only an admin key may ask for unwatermarked output".into();
            e.param("watermark")
        })?;
        info.add_note("unwatermarked");
    }
    let alternatives = req.logprobs.unwrap_or(0);
    if req.echo && alternatives > MAX_PROMPT_ALTERNATIVES && !key.has_scope(Scope::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            format!(
                "with echo, logprobs above {MAX_PROMPT_ALTERNATIVES} needs the admin scope: the \
                 alternatives at prompt positions are the model's unwatermarked next-token \
                 distribution (see docs/serve.md, \"What a key can learn\")"
            ),
        )
        .param("logprobs")
        .code("insufficient_scope"));
    }
    if mode == Mode::Loglikelihood {
        info.add_note("scoring: echo with one watermarked token, not recorded in the ledger");
    }
    Ok(mode)
}

fn random_hex() -> String {
    format!(
        "{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// Token ids of every prompt, checked against the model: known ids, and
/// room in the context for the prompt and `max_tokens`.
fn tokenize(s: &AppState, entry: &ModelEntry, req: &Validated) -> Result<Vec<Vec<u32>>, ApiError> {
    let n_ctx = entry.model.config().n_ctx;
    let vocab = s
        .tokenizer
        .vocab_size()
        .min(entry.model.config().vocab_size);
    req.adjust
        .validate(vocab)
        .map_err(|(param, m)| ApiError::invalid(m).param(param))?;
    let mut out = Vec::with_capacity(req.prompts.len());
    for p in &req.prompts {
        let ids = match p {
            PromptInput::Text(t) => s
                .tokenizer
                .encode(t)
                .map_err(|e| ApiError::invalid(e.to_string()).param("prompt"))?,
            PromptInput::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(ApiError::invalid(format!(
                        "token id {bad} is outside the vocabulary of {vocab}"
                    ))
                    .param("prompt"));
                }
                ids.clone()
            }
        };
        // An empty prompt is fed as <|endoftext|>, which takes a position.
        let fed = ids.len().max(1);
        if fed + req.max_tokens > n_ctx || (req.max_tokens > 0 && fed >= n_ctx) {
            return Err(ApiError::invalid(format!(
                "this model's context is {n_ctx} tokens; the prompt has {} and max_tokens asks for {} more",
                ids.len(),
                req.max_tokens
            ))
            .param(if fed >= n_ctx { "prompt" } else { "max_tokens" })
            .code("context_length_exceeded"));
        }
        out.push(ids);
    }
    Ok(out)
}

/// The prompts' own log-probabilities (echo with logprobs): each token
/// after the first, conditioned on the prompt before it, exactly as the
/// model sees the prompt (no `<|endoftext|>` in front; the first token has
/// none, null in the response, as OpenAI's and vLLM's). This is what
/// lm-evaluation-harness's loglikelihood expects of an API model, and what
/// `gpt2 eval lambada` computes.
async fn score_prompts(
    s: &Arc<AppState>,
    entry: &ModelEntry,
    prompts: &[Vec<u32>],
    top_n: usize,
) -> Result<Vec<Vec<TokenScore>>, ApiError> {
    let model = entry.model.clone();
    let prompts = prompts.to_vec();
    s.compute(move |_, cancel| {
        let mut scorer = Scorer::new(&model);
        let mut out = Vec::with_capacity(prompts.len());
        for p in &prompts {
            if cancel.is_cancelled() {
                return Err("the client disconnected".to_string());
            }
            out.push(if p.len() < 2 {
                Vec::new()
            } else {
                let span = Span {
                    input: p[..p.len() - 1].to_vec(),
                    targets: p[1..].to_vec(),
                };
                let mut scores = scorer
                    .score_spans(&[span], top_n, &mut |_| {})
                    .map_err(|e| format!("scoring the prompt failed: {e}"))?;
                scores.pop().unwrap_or_default()
            });
        }
        Ok(out)
    })
    .await?
    .map_err(|e| internal("scoring the prompt failed", e))
}

/// Hands the request to the model's engine: one job for all its prompts
/// and choices.
fn submit(
    entry: &ModelEntry,
    ctx: &Context,
    audit: &RequestAudit,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let prompts = ctx
        .prompts
        .iter()
        .map(|p| {
            if p.is_empty() {
                vec![END_OF_TEXT]
            } else {
                p.clone()
            }
        })
        .collect();
    let job = Job {
        prompts,
        n: ctx.req.best_of,
        max_tokens: ctx.req.max_tokens,
        sampling: ctx.req.sampling,
        seed: ctx.seed,
        stop: ctx.req.stop.clone().into(),
        logprobs: ctx.req.logprobs,
        watermark: ctx.req.watermark,
        adjust: ctx.req.adjust.clone(),
        events: tx,
        progress: audit.progress.clone(),
    };
    entry.queue.submit(job).map_err(|e| {
        let message = match e {
            SubmitError::Full => "the server is busy (its queue is full); retry shortly",
            SubmitError::Closed => "the server is shutting down",
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .code("overloaded")
            .retry_after(1)
    })?;
    Ok(rx)
}

/// One finished (or, for a stream, growing) sample.
#[derive(Debug, Clone, Default)]
struct Sample {
    text: String,
    ids: Vec<u32>,
    tokens: Vec<TokenOut>,
    finish: Option<FinishReason>,
}

/// Of each prompt's `drawn` samples (in order), the `n` with the highest
/// mean token log-probability (as reported), in the order they were drawn.
fn best_of(samples: Vec<Sample>, drawn: usize, n: usize) -> Vec<Sample> {
    if drawn == n {
        return samples;
    }
    // An empty sample (<|endoftext|> first) has no token to average, and
    // its mean of nothing would otherwise beat every real one: it ranks last.
    let mean = |x: &Sample| {
        let lp: f32 = x.tokens.iter().map(|t| t.logprob).sum();
        match x.tokens.len() {
            0 => f32::NEG_INFINITY,
            n => lp / n as f32,
        }
    };
    let mut out = Vec::with_capacity(samples.len() / drawn * n);
    let mut samples = samples.into_iter();
    loop {
        let group: Vec<Sample> = samples.by_ref().take(drawn).collect();
        if group.is_empty() {
            return out;
        }
        let mut order: Vec<usize> = (0..group.len()).collect();
        order.sort_by(|&a, &b| mean(&group[b]).total_cmp(&mean(&group[a])).then(a.cmp(&b)));
        let mut keep = order[..n.min(order.len())].to_vec();
        keep.sort_unstable();
        let mut group: Vec<Option<Sample>> = group.into_iter().map(Some).collect();
        out.extend(keep.into_iter().filter_map(|i| group[i].take()));
    }
}

async fn collect(mut rx: UnboundedReceiver<Event>, total: usize) -> Result<Vec<Sample>, ApiError> {
    let mut samples = vec![Sample::default(); total];
    let mut done = 0;
    while done < total {
        match rx.recv().await {
            Some(Event::Piece {
                index,
                text,
                tokens,
            }) => {
                if let Some(x) = samples.get_mut(index) {
                    x.text.push_str(&text);
                    x.tokens.extend(tokens);
                }
            }
            Some(Event::Done {
                index,
                finish,
                tokens,
                text,
            }) => {
                if let Some(x) = samples.get_mut(index) {
                    x.text = text;
                    x.ids = tokens;
                    x.finish = Some(finish);
                    done += 1;
                }
            }
            Some(Event::Failed(m)) => return Err(internal("generation failed", m)),
            None => {
                return Err(internal(
                    "generation failed",
                    "the engine stopped before finishing",
                ))
            }
        }
    }
    Ok(samples)
}

fn record(ctx: &Context, x: &Sample) -> NewRecord {
    NewRecord {
        tokens: if x.ids.is_empty() {
            x.tokens.iter().map(|t| t.id).collect()
        } else {
            x.ids.clone()
        },
        text: x.text.clone(),
        watermark_key_id: ctx.watermark_key_id.clone(),
        caller: Some(ctx.caller.clone()),
        model: Some(ctx.model.clone()),
    }
}

/// OpenAI's legacy `logprobs` object, built token by token.
#[derive(Default)]
struct Logprobs {
    tokens: Vec<String>,
    /// `None` (JSON null) for a prompt's first token, which has no context.
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
    /// Characters so far, for `text_offset`.
    offset: usize,
}

impl Logprobs {
    fn push(&mut self, tok: &gpt2_model::Tokenizer, id: u32, logprob: f32, top: &[(u32, f32)]) {
        let mut m = Map::new();
        for &(t, lp) in top {
            m.entry(tok.token_text(t)).or_insert(json!(lp));
        }
        self.push_token(tok, id, Some(logprob), Value::Object(m));
    }

    fn push_token(
        &mut self,
        tok: &gpt2_model::Tokenizer,
        id: u32,
        logprob: Option<f32>,
        top: Value,
    ) {
        let text = tok.token_text(id);
        self.text_offset.push(self.offset);
        self.offset += text.chars().count();
        self.tokens.push(text);
        self.token_logprobs.push(logprob);
        self.top_logprobs.push(top);
    }

    /// A prompt's tokens: the first with null (nothing precedes it), then
    /// each one's `scores` (conditioned on the prompt before it).
    fn prompt(tok: &gpt2_model::Tokenizer, prompt: &[u32], scores: &[TokenScore]) -> Logprobs {
        let mut l = Logprobs::default();
        if let Some(&first) = prompt.first() {
            l.push_token(tok, first, None, Value::Null);
        }
        for sc in scores {
            l.push(tok, sc.id, sc.logprob, &sc.top);
        }
        l
    }

    fn json(&self) -> Value {
        json!({
            "tokens": self.tokens,
            "token_logprobs": self.token_logprobs,
            "top_logprobs": self.top_logprobs,
            "text_offset": self.text_offset,
        })
    }
}

fn prompt_text(ctx: &Context, choice: usize) -> String {
    gpt2_model::Tokenizer::gpt2()
        .decode(ctx.prompt_of(choice))
        .unwrap_or_default()
}

fn usage(ctx: &Context, completion_tokens: usize) -> Value {
    let prompt: usize = ctx.prompts.iter().map(Vec::len).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    })
}

/// The response body; `completion_tokens` counts every sample drawn (with
/// `best_of`, more than those returned).
fn body_json(
    ctx: &Context,
    samples: &[Sample],
    ledger_ids: &[Option<i64>],
    completion_tokens: usize,
) -> Value {
    let tok = gpt2_model::Tokenizer::gpt2();
    let choices: Vec<Value> = samples
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let mut text = String::new();
            let mut lp = Logprobs::default();
            if ctx.req.echo {
                text = prompt_text(ctx, i);
                if let Some(sc) = ctx.prompt_scores.get(i / ctx.req.n) {
                    lp = Logprobs::prompt(&tok, ctx.prompt_of(i), sc);
                }
            }
            text.push_str(&x.text);
            for t in &x.tokens {
                lp.push(&tok, t.id, t.logprob, &t.top);
            }
            json!({
                "text": text,
                "index": i,
                "logprobs": ctx.req.logprobs.map(|_| lp.json()),
                "finish_reason": x.finish.unwrap_or(FinishReason::Length).as_str(),
            })
        })
        .collect();
    json!({
        "id": ctx.id,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
        "usage": usage(ctx, completion_tokens),
        "provenance": {
            "watermark_key_id": ctx.watermark_key_id,
            "ledger_ids": ledger_ids,
            "seed": ctx.seed,
        },
    })
}

/// Shortest time between two flushes of a stream (ledger commit, then the
/// events it covers).
const STREAM_FLUSH: std::time::Duration = std::time::Duration::from_millis(50);

fn start_stream(
    s: Arc<AppState>,
    ctx: Context,
    rx: UnboundedReceiver<Event>,
    mut audit: RequestAudit,
) -> Response {
    let (tx, response) = sse::response(64);
    tokio::spawn(async move {
        let status = stream(&s, &ctx, rx, &tx, &mut audit).await;
        drop(tx);
        audit.finish(status);
    });
    response
}

fn chunk(
    ctx: &Context,
    index: usize,
    text: &str,
    lp: Option<&Logprobs>,
    finish: Option<FinishReason>,
) -> Value {
    json!({
        "id": ctx.id,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [{
            "text": text,
            "index": index,
            "logprobs": lp.map(Logprobs::json),
            "finish_reason": finish.map(FinishReason::as_str),
        }],
    })
}

/// Relays the engine's events as server-sent events, committing each
/// choice's text so far to the ledger before sending the events that
/// reveal it. Returns the status to audit (200, or 500 when the ledger or
/// the engine failed mid-stream).
async fn stream(
    s: &AppState,
    ctx: &Context,
    mut rx: UnboundedReceiver<Event>,
    tx: &mpsc::Sender<Chunk>,
    audit: &mut RequestAudit,
) -> u16 {
    let info = &mut audit.info;
    let tok = gpt2_model::Tokenizer::gpt2();
    let total = ctx.choices();
    let mut samples = vec![Sample::default(); total];
    let mut recorded = vec![0usize; total];
    let mut ledger_ids: Vec<Option<i64>> = vec![None; total];
    let mut finished = 0;
    let mut offsets = vec![0usize; total];
    let mut last_flush = tokio::time::Instant::now() - STREAM_FLUSH;
    if ctx.req.echo {
        for (i, off) in offsets.iter_mut().enumerate() {
            let lp = ctx
                .prompt_scores
                .get(i / ctx.req.n)
                .map(|sc| Logprobs::prompt(&tok, ctx.prompt_of(i), sc));
            let text = prompt_text(ctx, i);
            *off = lp.as_ref().map(|l| l.offset).unwrap_or(0);
            if tx
                .send(sse::event(&chunk(ctx, i, &text, lp.as_ref(), None)))
                .await
                .is_err()
            {
                info.add_note("the client disconnected");
                return 200;
            }
        }
    }
    loop {
        // Coalesce: each flush costs a ledger commit, so a stream flushes
        // at most every STREAM_FLUSH, carrying every token since the last.
        tokio::time::sleep_until(last_flush + STREAM_FLUSH).await;
        let Some(first) = rx.recv().await else {
            return fail(tx, info, "the engine stopped before finishing").await;
        };
        let mut events = vec![first];
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        // One event per choice per flush: the ledger record of a choice's
        // text so far covers exactly what the client has once it has that
        // event (a client never holds half a flush of one choice).
        let mut pieces: std::collections::BTreeMap<usize, (String, Vec<TokenOut>)> =
            Default::default();
        let mut finishes = Vec::new();
        for e in events {
            match e {
                Event::Piece {
                    index,
                    text,
                    tokens,
                } => {
                    let Some(x) = samples.get_mut(index) else {
                        continue;
                    };
                    x.text.push_str(&text);
                    x.ids.extend(tokens.iter().map(|t| t.id));
                    let p = pieces.entry(index).or_default();
                    p.0.push_str(&text);
                    p.1.extend(tokens);
                }
                Event::Done {
                    index,
                    finish,
                    tokens,
                    ..
                } => {
                    let Some(x) = samples.get_mut(index) else {
                        continue;
                    };
                    x.ids = tokens;
                    x.finish = Some(finish);
                    finished += 1;
                    finishes.push((index, finish));
                }
                Event::Failed(m) => return fail(tx, info, m.as_str()).await,
            }
        }
        let mut out = Vec::with_capacity(pieces.len() + finishes.len());
        for (index, (text, tokens)) in pieces {
            let lp = ctx.req.logprobs.map(|_| {
                let mut l = Logprobs {
                    offset: offsets[index],
                    ..Logprobs::default()
                };
                for t in &tokens {
                    l.push(&tok, t.id, t.logprob, &t.top);
                }
                offsets[index] = l.offset;
                l
            });
            out.push(chunk(ctx, index, &text, lp.as_ref(), None));
        }
        let fresh: Vec<usize> = (0..total)
            .filter(|&i| ctx.records && samples[i].text.len() > recorded[i])
            .collect();
        let records = fresh.iter().map(|&i| record(ctx, &samples[i])).collect();
        let ids = match s.recorder.record(records).await {
            Ok(ids) => ids,
            Err(e) => return fail(tx, info, e).await,
        };
        last_flush = tokio::time::Instant::now();
        for (&i, id) in fresh.iter().zip(ids) {
            recorded[i] = samples[i].text.len();
            ledger_ids[i] = Some(id);
        }
        for (index, finish) in finishes {
            // Provenance rides on each choice's last chunk, an extra field
            // that standard clients ignore; its ledger record is the whole
            // completion's.
            let mut c = chunk(ctx, index, "", None, Some(finish));
            c["provenance"] = json!({
                "watermark_key_id": ctx.watermark_key_id,
                "seed": ctx.seed,
                "ledger_id": ledger_ids[index],
            });
            out.push(c);
        }
        info.completion_tokens = samples.iter().map(|x| x.ids.len() as u64).sum();
        for c in &out {
            if tx.send(sse::event(c)).await.is_err() {
                // Dropping `rx` on return cancels the rest in the engine.
                info.add_note("the client disconnected");
                return 200;
            }
        }
        if finished == total {
            if ctx.req.include_usage {
                let tail = json!({
                    "id": ctx.id, "object": "text_completion", "created": ctx.created,
                    "model": ctx.model, "choices": [],
                    "usage": usage(ctx, info.completion_tokens as usize),
                    "provenance": {"watermark_key_id": ctx.watermark_key_id, "seed": ctx.seed},
                });
                let _ = tx.send(sse::event(&tail)).await;
            }
            let _ = tx.send(sse::done()).await;
            return 200;
        }
    }
}

async fn fail(
    tx: &mpsc::Sender<Chunk>,
    info: &mut crate::audit::AuditInfo,
    error: impl crate::gate::Availability,
) -> u16 {
    let e = db_failure("the stream failed and was cut short", error);
    let _ = tx.send(sse::event(&e.body())).await;
    info.add_note(&e.message);
    e.status.as_u16()
}
