//! The ledger writer: one thread owns the provenance ledger and commits
//! whatever records are waiting in one transaction (group commit), so
//! concurrent completions share an fsync. A caller sends its records and
//! waits for the acknowledgement before showing the text to anyone; that
//! is what makes "every text a client received is in the ledger" survive a
//! `kill -9`.

use crate::metrics::Metrics;
use gpt2_provenance::ledger::{Ledger, NewRecord};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use tokio::sync::oneshot;

type Ack = oneshot::Sender<Result<Vec<i64>, RecordError>>;

/// Why records were not committed (so their text must not be shown).
#[derive(Debug, Clone)]
pub struct RecordError {
    pub message: String,
    /// The ledger's database is out of reach now (503, not 500).
    pub unavailable: bool,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn stopped() -> RecordError {
    RecordError {
        message: "the ledger writer has stopped".into(),
        unavailable: false,
    }
}

#[derive(Clone)]
pub struct Recorder {
    tx: Sender<(Vec<NewRecord>, Ack)>,
}

/// Most records in one transaction.
const MAX_GROUP: usize = 512;

impl Recorder {
    /// Starts the writer thread; it ends when every `Recorder` is dropped.
    pub fn start(
        ledger: Ledger,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Recorder, std::thread::JoinHandle<()>)> {
        let (tx, rx) = channel();
        let handle = std::thread::Builder::new()
            .name("gpt2-ledger".into())
            .spawn(move || write_loop(ledger, rx, &metrics))?;
        Ok((Recorder { tx }, handle))
    }

    /// Records `records` durably; returns their ids once committed.
    pub async fn record(&self, records: Vec<NewRecord>) -> Result<Vec<i64>, RecordError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let (ack, done) = oneshot::channel();
        self.tx.send((records, ack)).map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

fn write_loop(mut ledger: Ledger, rx: Receiver<(Vec<NewRecord>, Ack)>, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut count = group[0].0.len();
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => {
                    count += next.0.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let lens: Vec<usize> = group.iter().map(|(r, _)| r.len()).collect();
        let all: Vec<NewRecord> = group
            .iter_mut()
            .flat_map(|(r, _)| std::mem::take(r))
            .collect();
        match ledger.record_batch(&all) {
            Ok(ids) => {
                metrics
                    .ledger_records
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
                let mut at = 0;
                for ((_, ack), n) in group.into_iter().zip(lens) {
                    // record_batch returns one id per record, in order.
                    let _ = ack.send(Ok(ids.get(at..at + n).unwrap_or_default().to_vec()));
                    at += n;
                }
            }
            Err(e) => {
                let error = RecordError {
                    message: format!("the provenance ledger refused the record: {e}"),
                    unavailable: e.is_unavailable(),
                };
                for (_, ack) in group {
                    let _ = ack.send(Err(error.clone()));
                }
            }
        }
    }
}
