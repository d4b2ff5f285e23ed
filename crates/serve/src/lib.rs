//! gpt2-serve: `gpt2 serve`, a gated, OpenAI-compatible HTTP server for
//! GPT-2 that watermarks every completion and records it in the provenance
//! ledger before the client sees it.
//!
//! - [`state`]: the state directory (keys, audit log, ledger, watermark key);
//! - [`store`]: API keys (hashes only) and the audit log in SQLite;
//! - [`api`]: request bodies, their validation, OpenAI-style errors;
//! - [`engine`]: continuous batching over a model's KV cache slots;
//! - [`recorder`]: the ledger writer (group commit);
//! - [`server`]: routes, authentication, limits, audit, shutdown;
//! - [`completions`], [`detect`]: the endpoints;
//! - [`metrics`]: Prometheus text.

pub mod api;
pub mod completions;
pub mod detect;
pub mod engine;
pub mod metrics;
pub mod recorder;
pub mod server;
pub mod state;
pub mod store;

pub use server::{run, ServeConfig, ServeError};
pub use state::StateDir;
pub use store::{AuditEntry, KeyInfo, NewKey, Scope, Store};
