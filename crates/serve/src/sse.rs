//! Server-sent events: the framing of a streamed response.

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::convert::Infallible;
use tokio::sync::mpsc;

pub type Chunk = Result<Bytes, Infallible>;

/// One `data:` event carrying `v`.
pub fn event(v: &Value) -> Chunk {
    Ok(Bytes::from(format!("data: {v}\n\n")))
}

/// The end of an OpenAI-style stream.
pub fn done() -> Chunk {
    Ok(Bytes::from_static(b"data: [DONE]\n\n"))
}

/// A `text/event-stream` response fed by the returned sender.
pub fn response(buffer: usize) -> (mpsc::Sender<Chunk>, Response) {
    let (tx, rx) = mpsc::channel::<Chunk>(buffer);
    let r = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response();
    (tx, r)
}
