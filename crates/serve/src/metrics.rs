//! Prometheus metrics, written by hand in the text exposition format:
//! requests by endpoint and status, tokens in and out, request latency
//! histograms per endpoint, queue depth, and batch sizes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds of the latency buckets, seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch-size buckets (sequences per forward pass).
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    batch_sequences: Mutex<Histogram>,
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
    pub queue_depth: AtomicI64,
    batch_rows: AtomicU64,
    pub ledger_records: AtomicU64,
    /// Requests without a valid key, and those of them left out of the audit.
    pub unauthenticated: AtomicU64,
    pub unauthenticated_unaudited: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            latency: Mutex::default(),
            batch_sequences: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
            tokens_in: AtomicU64::new(0),
            tokens_out: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            batch_rows: AtomicU64::new(0),
            ledger_records: AtomicU64::new(0),
            unauthenticated: AtomicU64::new(0),
            unauthenticated_unaudited: AtomicU64::new(0),
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update; counters
/// are still worth reporting.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn observe_request(&self, endpoint: &str, status: u16, seconds: f64) {
        *lock(&self.requests)
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
        lock(&self.latency)
            .entry(endpoint.to_string())
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(seconds);
    }

    pub fn observe_batch(&self, sequences: usize, rows: usize) {
        lock(&self.batch_sequences).observe(sequences as f64);
        self.batch_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP gpt2_requests_total Requests by endpoint and HTTP status.\n");
        out.push_str("# TYPE gpt2_requests_total counter\n");
        for ((endpoint, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "gpt2_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP gpt2_request_duration_seconds Request latency (streams: until the last byte).\n");
        out.push_str("# TYPE gpt2_request_duration_seconds histogram\n");
        for (endpoint, h) in lock(&self.latency).iter() {
            h.write(
                &mut out,
                "gpt2_request_duration_seconds",
                &format!("endpoint=\"{endpoint}\""),
            );
        }
        let counters = [
            (
                "gpt2_prompt_tokens_total",
                "Prompt tokens received.",
                &self.tokens_in,
            ),
            (
                "gpt2_completion_tokens_total",
                "Tokens generated.",
                &self.tokens_out,
            ),
            (
                "gpt2_batch_rows_total",
                "Token rows run through the model.",
                &self.batch_rows,
            ),
            (
                "gpt2_ledger_records_total",
                "Records written to the provenance ledger.",
                &self.ledger_records,
            ),
            (
                "gpt2_unauthenticated_requests_total",
                "Requests without a valid API key (missing, malformed, unknown or revoked).",
                &self.unauthenticated,
            ),
            (
                "gpt2_unauthenticated_unaudited_total",
                "Requests without a valid key beyond the audit log's per-minute allowance.",
                &self.unauthenticated_unaudited,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        out.push_str("# HELP gpt2_queue_depth Requests waiting for a batch slot.\n");
        out.push_str("# TYPE gpt2_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "gpt2_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed).max(0)
        );
        out.push_str("# HELP gpt2_batch_sequences Sequences per forward pass.\n");
        out.push_str("# TYPE gpt2_batch_sequences histogram\n");
        lock(&self.batch_sequences).write(&mut out, "gpt2_batch_sequences", "");
        out
    }
}
