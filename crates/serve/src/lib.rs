//! gpt2-serve: `gpt2 serve`, a gated, OpenAI-compatible HTTP server for
//! GPT-2 that watermarks every completion and records it in the provenance
//! ledger before the client sees it.
//!
//! - [`state`]: the state directory (keys, audit log, ledger, watermark key);
//! - [`store`]: API keys (hashes only), quotas and the audit log, on
//!   SQLite or PostgreSQL;
//! - [`state_copy`]: a whole state copied between the two, verified;
//! - [`gate`]: authentication, scopes, rate limits and quotas;
//! - [`audit`]: one audit row per request, written by a drop guard;
//! - [`api`]: the OpenAI wire types: request bodies, validation, errors;
//! - [`sse`]: server-sent events framing;
//! - [`engine`]: continuous batching (drives `gpt2_generate::Decoder`);
//! - [`recorder`]: the ledger writer (group commit);
//! - [`app`]: what handlers share;
//! - [`completions`], [`detect`]: the endpoint handlers;
//! - [`routes`]: the router and the light endpoints;
//! - [`server`]: the run loop and shutdown;
//! - [`metrics`]: Prometheus text.

pub mod api;
pub mod app;
pub mod audit;
pub mod completions;
pub mod detect;
pub mod engine;
pub mod gate;
pub mod metrics;
pub mod recorder;
pub mod routes;
pub mod server;
pub mod sse;
pub mod state;
pub mod state_copy;
pub mod store;
pub mod tokenize;

pub use server::{run, ServeConfig, ServeError};
pub use state::{State, StateDir};
pub use store::{AuditEntry, KeyInfo, NewKey, Scope, Store};
