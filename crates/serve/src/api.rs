//! The wire format: request bodies (OpenAI's Completions shape plus a few
//! named extensions), their validation, and OpenAI-style error bodies.
//!
//! Parsing never panics and never guesses: unknown fields, wrong types,
//! invalid UTF-8 and out-of-range values are 400s that name the field.
//! `parse_completion` is what the fuzz target drives.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

/// An error as OpenAI's API reports it:
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn param(mut self, p: &str) -> ApiError {
        self.param = Some(p.to_string());
        self
    }

    pub fn code(mut self, c: &'static str) -> ApiError {
        self.code = Some(c);
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        r
    }
}

/// Parses a JSON body into `T`, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::invalid(format!(
            "the request body is not valid UTF-8 (first invalid byte at offset {})",
            e.valid_up_to()
        )));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() {
            "malformed JSON"
        } else {
            "invalid request"
        };
        let err = ApiError::invalid(format!("{what}: {inner}"));
        if path == "." || path.is_empty() {
            err
        } else {
            err.param(&path)
        }
    })?;
    // One JSON value is the whole body: anything after it (but
    // whitespace) is refused, not ignored.
    de.end().map_err(|e| {
        ApiError::invalid(format!(
            "malformed JSON: data after the request object ({e})"
        ))
    })?;
    Ok(value)
}

/// `prompt`: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions`. Extensions beyond OpenAI's fields: `top_k`,
/// `repetition_penalty`, and `watermark` (false: unwatermarked output,
/// admin keys only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f32>,
    pub watermark: Option<bool>,
    /// Token id (as a string, as OpenAI's JSON has it) to a bias.
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub best_of: Option<i64>,
    /// Refused with a message of its own (GPT-2 has no insertion mode).
    pub suffix: Option<serde_json::Value>,
}

/// `stream_options`: OpenAI's, with its one field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// A last chunk with `usage` (and `choices: []`) before `[DONE]`.
    pub include_usage: Option<bool>,
}

/// OpenAI's default `max_tokens`.
pub const DEFAULT_MAX_TOKENS: i64 = 16;
/// Most alternatives `logprobs` may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: i64 = 5;
/// Most stop strings (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
/// Longest `user` (characters): it is kept in the audit log.
pub const MAX_USER_CHARS: usize = 256;

/// A validated completion request, prompts still as given (tokenizing
/// needs the model's vocabulary and context, which `Validated::prompts`
/// checks against).
#[derive(Debug, Clone)]
pub struct Validated {
    pub model: Option<String>,
    pub prompts: Vec<PromptInput>,
    pub max_tokens: usize,
    pub sampling: gpt2_generate::SamplingParams,
    pub n: usize,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub logprobs: Option<usize>,
    pub echo: bool,
    pub user: Option<String>,
    pub stream: bool,
    /// Streams end with a usage chunk.
    pub include_usage: bool,
    pub watermark: bool,
    /// `logit_bias` (ids checked against the model's vocabulary later) and
    /// the penalties.
    pub adjust: gpt2_generate::LogitAdjust,
    /// Samples drawn per prompt, of which the `n` with the highest mean
    /// log-probability are returned (`n` when not asked for).
    pub best_of: usize,
}

#[derive(Debug, Clone)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// Parses and checks everything that does not depend on the model.
pub fn parse_completion(body: &[u8]) -> Result<Validated, ApiError> {
    let r: CompletionRequest = parse_json(body)?;
    validate(r)
}

fn validate(r: CompletionRequest) -> Result<Validated, ApiError> {
    let echo = r.echo.unwrap_or(false);
    let max_tokens = r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens < 0 || (max_tokens == 0 && !echo) {
        return Err(ApiError::invalid(format!(
            "max_tokens must be at least 1 (0 only with echo, to score the prompt), got {max_tokens}"
        ))
        .param("max_tokens"));
    }
    let n = r.n.unwrap_or(1);
    if !(1..=128).contains(&n) {
        return Err(ApiError::invalid(format!("n must be 1 to 128, got {n}")).param("n"));
    }
    if r.suffix.is_some() {
        return Err(ApiError::invalid(
            "suffix is not supported: GPT-2 only continues a prompt (no insertion)",
        )
        .param("suffix"));
    }
    let adjust = logit_adjust(&r)?;
    let best_of = r.best_of.unwrap_or(n);
    if best_of < n {
        return Err(
            ApiError::invalid(format!("best_of ({best_of}) must be at least n ({n})"))
                .param("best_of"),
        );
    }
    if best_of > n && r.stream.unwrap_or(false) {
        return Err(
            ApiError::invalid("best_of above n cannot be streamed (as in OpenAI's API)")
                .param("best_of"),
        );
    }
    let logprobs = match r.logprobs {
        None => None,
        Some(k) if (0..=MAX_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(
                ApiError::invalid(format!("logprobs must be 0 to {MAX_LOGPROBS}, got {k}"))
                    .param("logprobs"),
            )
        }
    };
    let top_k = r.top_k.unwrap_or(0);
    if top_k < 0 {
        return Err(ApiError::invalid(format!("top_k must be >= 0, got {top_k}")).param("top_k"));
    }
    let sampling = gpt2_generate::SamplingParams {
        temperature: r.temperature.unwrap_or(1.0),
        top_k: top_k as usize,
        top_p: r.top_p.unwrap_or(1.0),
        repetition_penalty: r.repetition_penalty.unwrap_or(1.0),
    };
    if sampling.temperature > 2.0 {
        return Err(ApiError::invalid(format!(
            "temperature must be 0 to 2, got {}",
            sampling.temperature
        ))
        .param("temperature"));
    }
    sampling.validate().map_err(ApiError::invalid)?;
    let stop = match r.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_STOPS} stop strings, got {}",
            stop.len()
        ))
        .param("stop"));
    }
    let prompts = match r.prompt.unwrap_or(Prompt::Text(String::new())) {
        Prompt::Text(s) => vec![PromptInput::Text(s)],
        Prompt::Texts(v) => v.into_iter().map(PromptInput::Text).collect(),
        Prompt::Tokens(t) => vec![PromptInput::Tokens(t)],
        Prompt::TokenLists(v) => v.into_iter().map(PromptInput::Tokens).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt is an empty list").param("prompt"));
    }
    if prompts.len() * best_of as usize > 128 {
        return Err(ApiError::invalid(format!(
            "at most 128 completions per request; {} prompts x {} = {best_of} asks for {}",
            prompts.len(),
            if best_of > n { "best_of" } else { "n" },
            prompts.len() * best_of as usize
        ))
        .param(if best_of > n { "best_of" } else { "n" }));
    }
    if let Some(u) = &r.user {
        let chars = u.chars().count();
        if chars > MAX_USER_CHARS {
            return Err(ApiError::invalid(format!(
                "user must be at most {MAX_USER_CHARS} characters, got {chars}"
            ))
            .param("user"));
        }
    }
    Ok(Validated {
        model: r.model,
        prompts,
        max_tokens: max_tokens as usize,
        sampling,
        n: n as usize,
        stop,
        seed: r.seed,
        logprobs,
        echo,
        user: r.user,
        stream: r.stream.unwrap_or(false),
        include_usage: r
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        watermark: r.watermark.unwrap_or(true),
        adjust,
        best_of: best_of as usize,
    })
}

/// `logit_bias` and the penalties, in OpenAI's ranges; token ids are
/// checked against the model's vocabulary once the model is known.
fn logit_adjust(r: &CompletionRequest) -> Result<gpt2_generate::LogitAdjust, ApiError> {
    let mut bias = Vec::new();
    for (id, &b) in r.logit_bias.iter().flatten() {
        let id: u32 = id.trim().parse().map_err(|_| {
            ApiError::invalid(format!("logit_bias: {id:?} is not a token id")).param("logit_bias")
        })?;
        bias.push((id, b));
    }
    let adjust = gpt2_generate::LogitAdjust {
        bias: bias.into(),
        presence_penalty: r.presence_penalty.unwrap_or(0.0),
        frequency_penalty: r.frequency_penalty.unwrap_or(0.0),
    };
    // Ranges only here (any id passes); `completions` checks the ids.
    adjust
        .validate(usize::MAX)
        .map_err(|(param, m)| ApiError::invalid(m).param(param))?;
    Ok(adjust)
}

/// `POST /v1/detect`: detector statistics and GLTR ranks of a text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectRequest {
    pub text: String,
    pub model: Option<String>,
}

/// `POST /v1/watermark/detect`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkDetectRequest {
    pub text: String,
    /// The prompt the text continues, if known (context of its first tokens).
    #[serde(default)]
    pub prompt: String,
    pub z_threshold: Option<f64>,
}

/// `POST /v1/provenance/lookup`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    pub text: String,
    pub min_score: Option<f64>,
}

/// `POST /tokenize`, in vLLM's shape (`prompt`, `add_special_tokens`:
/// what lm-evaluation-harness's `RemoteTokenizer` sends) or llama.cpp's
/// (`content`, `add_special`, `with_pieces`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub content: Option<String>,
    /// GPT-2 adds no special tokens either way; accepted for the clients.
    pub add_special_tokens: Option<bool>,
    pub add_special: Option<bool>,
    /// llama.cpp: each token as `{"id", "piece"}` instead of an id.
    pub with_pieces: Option<bool>,
}

impl TokenizeRequest {
    /// The text, from whichever client's field holds it (exactly one).
    pub fn text(&self) -> Result<&str, ApiError> {
        match (&self.prompt, &self.content) {
            (Some(t), None) | (None, Some(t)) => Ok(t),
            (None, None) => {
                Err(ApiError::invalid("send the text as `prompt` (or `content`)").param("prompt"))
            }
            (Some(_), Some(_)) => Err(ApiError::invalid(
                "send either `prompt` or `content`, not both",
            )
            .param("content")),
        }
    }
}

/// `POST /detokenize` (vLLM's and llama.cpp's shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bodies_are_400s_naming_the_field() {
        let e = parse_completion(b"{").unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let e = parse_completion(br#"{"prompt": "a", "bogus": 1}"#).unwrap_err();
        assert!(e.message.contains("unknown field `bogus`"), "{}", e.message);
        let e = parse_completion(br#"{"max_tokens": "ten"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse_completion(br#"{"max_tokens": 0}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse_completion(b"{\"prompt\": \"\xff\"}").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        let e = parse_completion(br#"{"prompt": [1, "a"]}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse_completion(br#"{"temperature": -1}"#).unwrap_err();
        assert!(e.message.contains("temperature"), "{}", e.message);
        assert!(parse_completion(br#"{"prompt": [[1, 2], [3]], "n": 2}"#).is_ok());
        let e = parse_completion(br#"{"prompt": "a"} trailing"#).unwrap_err();
        assert!(
            e.message.contains("data after the request"),
            "{}",
            e.message
        );
        assert!(parse_completion(b"{\"prompt\": \"a\"} \n").is_ok());
        let long = format!(r#"{{"prompt": "a", "user": "{}"}}"#, "u".repeat(257));
        assert_eq!(
            parse_completion(long.as_bytes())
                .unwrap_err()
                .param
                .as_deref(),
            Some("user")
        );
        assert!(parse_completion(br#"{"prompt": "x", "echo": true, "max_tokens": 0}"#).is_ok());
    }
}
