//! Writing the audit log off the request path.
//!
//! [`AuditSink::record`] never waits: it puts the entry on a bounded
//! channel, and a writer task appends whatever has queued up in one
//! `append_audit` transaction (one hash-chain step per org per batch). When
//! the store fails, the writer keeps the batch and retries with backoff, so
//! a short outage loses nothing; if the queue fills meanwhile, further
//! entries are counted in [`AuditSink::dropped`] and logged, never allowed
//! to block or fail a request. Dropping every sink ends the writer after it
//! has written what was queued (the server awaits it on shutdown).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::Store;
use crate::model::AuditDraft;

const QUEUE: usize = 8_192;
const BATCH: usize = 512;

/// A handle for recording audit entries. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditDraft>,
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// Starts the writer on the current runtime.
    pub fn spawn(store: Store) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(writer(store, rx));
        (
            AuditSink {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            task,
        )
    }

    /// Queues an entry; never waits. An entry without a trace id gets the
    /// current request's ([`crate::trace`]).
    pub fn record(&self, mut draft: AuditDraft) {
        if draft.trace_id.is_none() {
            draft.trace_id = crate::trace::current();
        }
        if self.tx.try_send(draft).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(dropped = n, "audit queue full: entries dropped");
            }
        }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<AuditDraft>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match store.append_audit(batch.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, entries = batch.len(), "audit write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
}
