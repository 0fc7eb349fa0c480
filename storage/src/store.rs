//! The cell-side half: [`Store`] and the per-org [`OrgLog`] handles.
//!
//! Visibility rule: an append gets its offsets when it is first polled, is
//! queued to the I/O thread, and becomes visible only once the I/O thread
//! reports everything up to its end durable. The I/O thread writes each
//! org's appends in offset order and an org that fails one write refuses all
//! later ones, so "durable up to N" is a single number (`durable_end`) and
//! publishing is a pop from the front of the in-flight queue: a later append
//! can never become visible before an earlier one, and an append whose future
//! was dropped still becomes visible.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use arrow_array::RecordBatch;
use honeycell_types::{OrgId, now_us};
use tokio::sync::{OnceCell, oneshot};

use crate::config::StorageConfig;
use crate::dedup::{DedupIndex, batch_ids};
use crate::error::{Error, Result};
use crate::event::check_stored_schema;
use crate::io::{DropOutcome, IoCounters, IoThread, OrgShared, Request};
use crate::segment::Segment;
use crate::summary::SegmentStats;
use crate::{Chunk, wal};

/// What an append wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendAck {
    /// The offset of the first row stored (where the next would go when
    /// none was).
    pub first_offset: u64,
    /// Rows stored: the batch's rows less its duplicates.
    pub rows: usize,
    /// Rows not stored because their `event_id` was stored within the
    /// dedup window (`dedup.rs`).
    pub duplicates: usize,
    /// Bytes added to the WAL.
    pub bytes: u64,
}

/// What one [`OrgLog::maintain`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub sealed_segments: usize,
    pub sealed_rows: u64,
    /// Segments merged away, and the segments they were merged into.
    pub compacted_inputs: usize,
    pub compacted_outputs: usize,
    pub dropped_segments: usize,
    pub dropped_rows: u64,
    pub dropped_bytes: u64,
    /// Another maintenance of this org was still running; nothing was done.
    pub busy: bool,
}

/// State shared by the store and its org handles. Org handles hold this,
/// not the store, so that the store's org cache forms no `Rc` cycle.
struct Shared {
    tx: Sender<Request>,
    /// The segment thread's queue.
    segment_tx: Sender<SegmentJob>,
    data_dir: PathBuf,
    config: StorageConfig,
    counters: Arc<IoCounters>,
    /// Bytes in all orgs' memtables (published, not yet sealed).
    memtable_bytes: Cell<u64>,
    /// Event ids the orgs' dedup indexes forgot early to stay within
    /// `dedup_max_ids`.
    dedup_evicted: Cell<u64>,
}

impl Shared {
    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)
    }

    /// Runs `job` on the segment thread.
    async fn on_segment_thread<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(move || {
            let _ = reply.send(job());
        });
        self.segment_tx
            .send(SegmentJob::Run(job))
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)
    }
}

/// Work for the segment thread: writing segments (seal, compaction) is
/// long (encoding and fsyncing up to `segment_max_rows` rows), so it runs
/// beside the I/O thread rather than on it, and appends never queue behind
/// it.
enum SegmentJob {
    Run(Box<dyn FnOnce() + Send>),
    Stop,
}

fn run_segment_thread(rx: std::sync::mpsc::Receiver<SegmentJob>) {
    while let Ok(SegmentJob::Run(job)) = rx.recv() {
        job();
    }
}

/// One cell's storage: the I/O thread and the cache of opened orgs.
pub struct Store {
    shared: Rc<Shared>,
    data_dir: PathBuf,
    orgs: RefCell<HashMap<OrgId, Rc<OnceCell<OrgLog>>>>,
    thread: Option<JoinHandle<()>>,
    segment_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Create `{data_dir}/orgs` if needed and start the I/O thread under the
    /// given name (e.g. `cell-0-io`) and the segment thread (`cell-0-io-seg`).
    /// Orgs are opened lazily by [`Store::org`].
    pub fn open(data_dir: &Path, config: StorageConfig, io_thread_name: String) -> Result<Store> {
        config.validate()?;
        let orgs_dir = data_dir.join("orgs");
        std::fs::create_dir_all(&orgs_dir).map_err(|e| Error::io(&orgs_dir, e))?;
        let counters = Arc::new(IoCounters::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let io = IoThread::new(data_dir.to_owned(), config.durability(), counters.clone());
        let segment_name = format!("{io_thread_name}-seg");
        let (segment_tx, segment_rx) = std::sync::mpsc::channel();
        let segment_thread = std::thread::Builder::new()
            .name(segment_name.clone())
            .spawn(move || run_segment_thread(segment_rx))
            .map_err(|source| Error::Spawn {
                thread: segment_name,
                source,
            })?;
        let thread = std::thread::Builder::new()
            .name(io_thread_name.clone())
            .spawn(move || io.run(rx))
            .map_err(|source| Error::Spawn {
                thread: io_thread_name,
                source,
            })?;
        Ok(Store {
            shared: Rc::new(Shared {
                tx,
                segment_tx,
                data_dir: data_dir.to_owned(),
                config,
                counters,
                memtable_bytes: Cell::new(0),
                dedup_evicted: Cell::new(0),
            }),
            data_dir: data_dir.to_owned(),
            orgs: RefCell::new(HashMap::new()),
            thread: Some(thread),
            segment_thread: Some(segment_thread),
        })
    }

    /// The org's log, opened and recovered (on the I/O thread) on first use.
    /// Concurrent callers for the same org wait for the same recovery.
    pub async fn org(&self, org: &OrgId) -> Result<OrgLog> {
        let cell = self
            .orgs
            .borrow_mut()
            .entry(org.clone())
            .or_default()
            .clone();
        let log = cell
            .get_or_try_init(|| async {
                let recovered = self
                    .shared
                    .request(|reply| Request::Open {
                        org: org.clone(),
                        dedup_since_us: (self.shared.config.dedup_window_us() > 0)
                            .then(|| now_us().saturating_sub(self.shared.config.dedup_window_us())),
                        reply,
                    })
                    .await??;
                Ok::<_, Error>(OrgLog::new(org.clone(), self.shared.clone(), recovered))
            })
            .await?;
        Ok(log.clone())
    }

    /// Orgs with a directory under `{data_dir}/orgs` (a directory listing on
    /// the caller's thread: meant for startup).
    pub fn orgs_on_disk(&self) -> Result<Vec<OrgId>> {
        let dir = self.data_dir.join("orgs");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            if !entry
                .file_type()
                .map_err(|e| Error::io(entry.path(), e))?
                .is_dir()
            {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            match OrgId::new(name) {
                Ok(org) => out.push(org),
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "ignoring directory that is not an org id")
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Bytes held in memtables and not yet sealed, plus bytes queued to the
    /// I/O thread: what admission control should bound.
    pub fn buffered_bytes(&self) -> u64 {
        self.shared.memtable_bytes.get() + self.shared.counters.queued_bytes.load(Ordering::Acquire)
    }

    /// Appends sent to the I/O thread and not yet answered.
    pub fn queued_writes(&self) -> usize {
        self.shared.counters.queued_writes.load(Ordering::Acquire)
    }

    /// Event ids forgotten before the end of `dedup_window` because an org
    /// held `dedup_max_ids` (a metric: when it grows, the effective window
    /// is shorter than configured).
    pub fn dedup_evicted(&self) -> u64 {
        self.shared.dedup_evicted.get()
    }

    /// WAL fsyncs done so far (a metric; with group commit it grows slower
    /// than the number of appends under load).
    pub fn wal_fsyncs(&self) -> u64 {
        self.shared.counters.fsyncs.load(Ordering::Relaxed)
    }

    /// Stop the segment thread (once it has done what is queued now) until
    /// the returned sender sends or is dropped.
    #[cfg(test)]
    pub(crate) fn hold_segments_for_tests(&self) -> std::sync::mpsc::Sender<()> {
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (held_tx, held) = std::sync::mpsc::channel();
        let _ = self
            .shared
            .segment_tx
            .send(SegmentJob::Run(Box::new(move || {
                let _ = held_tx.send(());
                let _ = hold.recv();
            })));
        let _ = held.recv();
        release
    }

    /// Stop the I/O thread (once it has drained what is queued now) until
    /// the returned sender sends or is dropped.
    #[cfg(test)]
    pub(crate) fn hold_io_for_tests(&self) -> std::sync::mpsc::Sender<()> {
        let (release, hold) = std::sync::mpsc::channel();
        let (held_tx, held) = std::sync::mpsc::channel();
        let _ = self.shared.tx.send(Request::Hold {
            held: held_tx,
            release: hold,
        });
        let _ = held.recv();
        release
    }

    /// Write and fsync everything queued, stop the I/O thread and join it.
    /// Org handles still alive afterwards fail with [`Error::Closed`].
    pub async fn shutdown(mut self) -> Result<()> {
        // The segment thread finishes what it holds first (a seal's WAL
        // files are deleted only after its segments are written).
        let _ = self.shared.segment_tx.send(SegmentJob::Stop);
        if let Some(thread) = self.segment_thread.take()
            && thread.join().is_err()
        {
            tracing::error!("storage segment thread panicked");
        }
        let result = self
            .shared
            .request(|reply| Request::Shutdown { reply })
            .await;
        if let Some(thread) = self.thread.take() {
            // The thread has answered and is returning: a short join.
            if thread.join().is_err() {
                tracing::error!("storage I/O thread panicked");
            }
        }
        result?
    }
}

/// A cheap handle on one org's log (cloning it clones an `Rc`).
#[derive(Clone)]
pub struct OrgLog {
    inner: Rc<OrgInner>,
}

impl std::fmt::Debug for OrgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgLog")
            .field("org", &self.inner.org)
            .finish_non_exhaustive()
    }
}

struct OrgInner {
    org: OrgId,
    store: Rc<Shared>,
    io: Arc<OrgShared>,
    state: RefCell<OrgState>,
}

pub(crate) struct OrgState {
    pub(crate) segments: Vec<Segment>,
    /// Published, unsealed chunks, contiguous after the last segment.
    memtable: Vec<Chunk>,
    memtable_rows: u64,
    memtable_bytes: u64,
    /// Queued appends in offset order, not yet durable.
    inflight: VecDeque<Chunk>,
    /// Next offset to hand out.
    next_offset: u64,
    /// End of what snapshots see.
    visible_end: u64,
    failed: Option<String>,
    maintaining: bool,
    snapshot: Option<OrgSnapshot>,
    /// Ids stored within the dedup window.
    dedup: DedupIndex,
}

impl OrgState {
    fn first_offset(&self) -> u64 {
        self.segments
            .first()
            .map(|s| s.first)
            .or_else(|| self.memtable.first().map(|c| c.first_offset))
            .unwrap_or(self.visible_end)
    }
}

impl OrgLog {
    fn new(org: OrgId, store: Rc<Shared>, recovered: crate::io::Recovered) -> Self {
        let memtable_rows = recovered
            .memtable
            .iter()
            .map(|c| c.batch.num_rows() as u64)
            .sum();
        let memtable_bytes: u64 = recovered
            .memtable
            .iter()
            .map(|c| c.batch.get_array_memory_size() as u64)
            .sum();
        store
            .memtable_bytes
            .set(store.memtable_bytes.get() + memtable_bytes);
        let config = &store.config;
        let mut dedup = DedupIndex::new(config.dedup_window_us(), config.dedup_max_ids);
        dedup.expire(now_us());
        let mut evicted = 0;
        for (at, ids) in recovered.recent_ids {
            evicted += dedup.restore(at, ids);
        }
        store.dedup_evicted.set(store.dedup_evicted.get() + evicted);
        let state = OrgState {
            segments: recovered.segments,
            memtable: recovered.memtable,
            memtable_rows,
            memtable_bytes,
            inflight: VecDeque::new(),
            next_offset: recovered.end_offset,
            visible_end: recovered.end_offset,
            failed: None,
            maintaining: false,
            snapshot: None,
            dedup,
        };
        OrgLog {
            inner: Rc::new(OrgInner {
                org,
                store,
                io: recovered.shared,
                state: RefCell::new(state),
            }),
        }
    }

    pub fn org(&self) -> &OrgId {
        &self.inner.org
    }

    #[cfg(test)]
    pub(crate) fn inner_state_for_tests(&self) -> std::cell::Ref<'_, OrgState> {
        self.inner.state.borrow()
    }

    /// Append a full-schema batch (from [`crate::build_batch`] or
    /// [`crate::normalize_batch`]). Resolves once durable under the
    /// configured durability; from then on snapshots include it. Offsets are
    /// taken when the future is first polled.
    ///
    /// Rows whose `event_id` was stored within the dedup window are dropped
    /// and counted in [`AppendAck::duplicates`] (`dedup.rs`). An append
    /// that drops rows still resolves only once everything issued before it
    /// is durable, so a retry racing its original is not acknowledged
    /// before the original, and fails if the original does.
    pub async fn append(&self, batch: RecordBatch) -> Result<AppendAck> {
        check_stored_schema(&batch)?;
        let (first_offset, rows, duplicates, bytes, answer, batch) = {
            let mut st = self.inner.state.borrow_mut();
            if let Some(reason) = &st.failed {
                return Err(Error::OrgFailed {
                    org: self.inner.org.clone(),
                    reason: reason.clone(),
                });
            }
            let (batch, duplicates) = self.drop_duplicates(&mut st, batch)?;
            let rows = batch.num_rows();
            let first_offset = st.next_offset;
            let durable = self.inner.io.durable_end.load(Ordering::Acquire);
            // A batch of duplicates only waits for what is in flight (their
            // originals may be among it): an empty frame is answered once
            // the org's earlier appends are durable.
            if rows == 0 && (duplicates == 0 || durable >= first_offset) {
                return Ok(AppendAck {
                    first_offset,
                    rows,
                    duplicates,
                    bytes: 0,
                });
            }
            let frame = match rows {
                0 => Vec::new(),
                _ => match wal::encode_frame(first_offset, &batch) {
                    Ok(frame) => frame,
                    Err(e) => {
                        st.dedup.forget(batch_ids(&batch).into_iter().flatten());
                        return Err(e);
                    }
                },
            };
            let bytes = frame.len() as u64;
            let (reply, answer) = oneshot::channel();
            let counters = &self.inner.store.counters;
            counters.queued_writes.fetch_add(1, Ordering::AcqRel);
            counters.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
            let sent = self.inner.store.tx.send(Request::Append {
                org: self.inner.org.clone(),
                first_offset,
                end_offset: first_offset + rows as u64,
                frame,
                reply,
            });
            if sent.is_err() {
                counters.queued_writes.fetch_sub(1, Ordering::AcqRel);
                counters.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                st.dedup.forget(batch_ids(&batch).into_iter().flatten());
                return Err(Error::Closed);
            }
            st.next_offset += rows as u64;
            if rows > 0 {
                st.inflight.push_back(Chunk {
                    first_offset,
                    batch: batch.clone(),
                });
            }
            (first_offset, rows, duplicates, bytes, answer, batch)
        };
        let result = answer.await.unwrap_or(Err(Error::Closed));
        match result {
            Ok(()) => {
                self.publish_durable();
                Ok(AppendAck {
                    first_offset,
                    rows,
                    duplicates,
                    bytes,
                })
            }
            Err(e) => {
                let mut st = self.inner.state.borrow_mut();
                // Everything from this offset on is refused by the I/O thread
                // too, so none of it may become visible.
                st.inflight.retain(|c| c.first_offset < first_offset);
                st.failed.get_or_insert_with(|| e.to_string());
                st.dedup.forget(batch_ids(&batch).into_iter().flatten());
                Err(e)
            }
        }
    }

    /// Remembers the batch's ids in the dedup index and drops the rows
    /// seen before; the batch to store and the number dropped.
    fn drop_duplicates(
        &self,
        st: &mut OrgState,
        batch: RecordBatch,
    ) -> Result<(RecordBatch, usize)> {
        if !st.dedup.enabled() || batch.num_rows() == 0 {
            return Ok((batch, 0));
        }
        let ids = batch_ids(&batch);
        let mut keep = Vec::with_capacity(ids.len());
        let (duplicates, evicted) = st.dedup.admit(&ids, now_us(), &mut keep);
        let shared = &self.inner.store;
        shared
            .dedup_evicted
            .set(shared.dedup_evicted.get() + evicted);
        if duplicates == 0 {
            return Ok((batch, 0));
        }
        let mask = arrow_array::BooleanArray::from(keep);
        match arrow_select::filter::filter_record_batch(&batch, &mask) {
            Ok(kept) => Ok((kept, duplicates)),
            Err(e) => {
                let admitted = ids.iter().zip(mask.values().iter());
                st.dedup
                    .forget(admitted.filter_map(|(id, kept)| id.filter(|_| kept)));
                Err(e.into())
            }
        }
    }

    /// Move appends the I/O thread reports durable from in-flight to the
    /// memtable, in offset order.
    fn publish_durable(&self) {
        let durable = self.inner.io.durable_end.load(Ordering::Acquire);
        let mut st = self.inner.state.borrow_mut();
        let mut added = 0;
        let mut merged_delta = 0i64;
        while st
            .inflight
            .front()
            .is_some_and(|c| c.end_offset() <= durable)
        {
            let Some(chunk) = st.inflight.pop_front() else {
                break;
            };
            added += chunk.batch.get_array_memory_size() as u64;
            st.memtable_rows += chunk.batch.num_rows() as u64;
            st.visible_end = chunk.end_offset();
            st.memtable.push(chunk);
            st.snapshot = None;
            merged_delta += coalesce_tail(&mut st.memtable);
        }
        // Merging small chunks changes the memory they hold (usually less).
        let net = added as i64 + merged_delta;
        let (grow, shrink) = (net.max(0) as u64, (-net).max(0) as u64);
        st.memtable_bytes = (st.memtable_bytes + grow).saturating_sub(shrink);
        let total = &self.inner.store.memtable_bytes;
        total.set((total.get() + grow).saturating_sub(shrink));
    }

    /// A consistent view of everything visible now.
    pub fn snapshot(&self) -> OrgSnapshot {
        self.publish_durable();
        let mut st = self.inner.state.borrow_mut();
        if let Some(snapshot) = &st.snapshot {
            return snapshot.clone();
        }
        let chunks: Arc<[Chunk]> = st
            .segments
            .iter()
            .flat_map(|s| s.chunks.iter().cloned())
            .chain(st.memtable.iter().cloned())
            .collect();
        let snapshot = OrgSnapshot {
            chunks,
            segments: st.segments.iter().map(Segment::stats).collect(),
            first_offset: st.first_offset(),
            end_offset: st.visible_end,
        };
        st.snapshot = Some(snapshot.clone());
        snapshot
    }

    /// Segment file bytes plus WAL bytes: what a storage quota counts.
    pub fn stored_bytes(&self) -> u64 {
        let st = self.inner.state.borrow();
        st.segments.iter().map(|s| s.file_bytes).sum::<u64>()
            + self.inner.io.wal_bytes.load(Ordering::Acquire)
    }

    /// Bytes of durable events held in memory, not yet sealed into a
    /// segment (this org's share of [`Store::buffered_bytes`]).
    pub fn memtable_bytes(&self) -> u64 {
        self.publish_durable();
        self.inner.state.borrow().memtable_bytes
    }

    pub fn event_count(&self) -> u64 {
        self.end_offset() - self.first_offset()
    }

    pub fn first_offset(&self) -> u64 {
        self.publish_durable();
        self.inner.state.borrow().first_offset()
    }

    /// One past the last visible offset.
    pub fn end_offset(&self) -> u64 {
        self.publish_durable();
        self.inner.state.borrow().visible_end
    }

    /// Whether [`OrgLog::maintain`] has work: a memtable over a threshold,
    /// segments to merge, or segments past retention.
    pub fn needs_maintenance(&self, now_us: i64) -> bool {
        self.publish_durable();
        let st = self.inner.state.borrow();
        let config = &self.inner.store.config;
        if st.maintaining {
            return false;
        }
        self.seal_due(&st, false)
            || compaction_run(&st.segments, config).is_some()
            || expired_prefix(&st.segments, config, now_us) > 0
    }

    fn seal_due(&self, st: &OrgState, force: bool) -> bool {
        let config = &self.inner.store.config;
        st.memtable_rows > 0
            && (force
                || st.memtable_rows >= config.segment_max_rows as u64
                || st.memtable_bytes >= config.segment_max_bytes)
    }

    /// Seal the memtable into segments when over a threshold (or when
    /// `force_seal`), merge runs of small segments, and drop segments past
    /// retention. The work runs on the I/O thread; appends and snapshots go
    /// on meanwhile. A second call while one runs returns at once with
    /// `busy` set.
    pub async fn maintain(&self, now_us: i64, force_seal: bool) -> Result<MaintenanceReport> {
        self.publish_durable();
        let mut report = MaintenanceReport::default();
        let _guard = match MaintainGuard::take(&self.inner) {
            Some(guard) => guard,
            None => {
                report.busy = true;
                return Ok(report);
            }
        };
        let store = &self.inner.store;
        let config = &store.config;

        let to_seal = {
            let st = self.inner.state.borrow();
            self.seal_due(&st, force_seal).then(|| st.memtable.clone())
        };
        if let Some(chunks) = to_seal {
            let seal_end = chunks.last().map_or(0, Chunk::end_offset);
            let org = &self.inner.org;
            let seg_dir = store
                .request(|reply| Request::Rotate {
                    org: org.clone(),
                    reply,
                })
                .await??;
            let max_rows = config.segment_max_rows;
            let segments = store
                .on_segment_thread(move || crate::io::write_sealed(&seg_dir, &chunks, max_rows))
                .await??;
            store
                .request(|reply| Request::Sealed {
                    org: org.clone(),
                    seal_end,
                    reply,
                })
                .await??;
            let mut st = self.inner.state.borrow_mut();
            let (rows, bytes) = drain_sealed(&mut st.memtable, seal_end);
            st.memtable_rows -= rows;
            st.memtable_bytes -= bytes;
            store
                .memtable_bytes
                .set(store.memtable_bytes.get().saturating_sub(bytes));
            report.sealed_segments = segments.len();
            report.sealed_rows = rows;
            st.segments.extend(segments);
            st.snapshot = None;
        }

        loop {
            let inputs = {
                let st = self.inner.state.borrow();
                match compaction_run(&st.segments, config) {
                    Some(range) => st.segments[range].to_vec(),
                    None => break,
                }
            };
            let first = inputs.first().map_or(0, |s| s.first);
            let count = inputs.len();
            let seg_dir = crate::io::org_dir(&store.data_dir, &self.inner.org).join("segments");
            let merged = store
                .on_segment_thread(move || crate::io::compact(&seg_dir, &inputs))
                .await??;
            let mut st = self.inner.state.borrow_mut();
            let Some(at) = st.segments.iter().position(|s| s.first == first) else {
                break;
            };
            st.segments.splice(at..at + count, [merged]);
            st.snapshot = None;
            report.compacted_inputs += count;
            report.compacted_outputs += 1;
        }

        let expired = {
            let st = self.inner.state.borrow();
            let n = expired_prefix(&st.segments, config, now_us);
            (n > 0).then(|| {
                (
                    st.segments[..n]
                        .iter()
                        .map(|s| s.path.clone())
                        .collect::<Vec<_>>(),
                    st.segments[n - 1].end,
                )
            })
        };
        if let Some((paths, new_first)) = expired {
            let DropOutcome { deleted, error } = store
                .request(|reply| Request::DropSegments {
                    org: self.inner.org.clone(),
                    paths,
                    new_first,
                    reply,
                })
                .await?;
            let mut st = self.inner.state.borrow_mut();
            for s in st.segments.drain(..deleted) {
                report.dropped_rows += s.rows();
                report.dropped_bytes += s.file_bytes;
            }
            report.dropped_segments = deleted;
            st.snapshot = None;
            if let Some(e) = error {
                return Err(e);
            }
        }
        Ok(report)
    }
}

struct MaintainGuard {
    inner: Rc<OrgInner>,
}

impl MaintainGuard {
    fn take(inner: &Rc<OrgInner>) -> Option<Self> {
        let mut st = inner.state.borrow_mut();
        if st.maintaining {
            return None;
        }
        st.maintaining = true;
        Some(MaintainGuard {
            inner: inner.clone(),
        })
    }
}

impl Drop for MaintainGuard {
    fn drop(&mut self) {
        self.inner.state.borrow_mut().maintaining = false;
    }
}

/// The first run of at least two adjacent segments each below
/// `compact_below_rows` whose merge stays within `segment_max_rows`.
fn compaction_run(segments: &[Segment], config: &StorageConfig) -> Option<std::ops::Range<usize>> {
    let small = |s: &Segment| s.rows() < config.compact_below_rows as u64;
    let mut i = 0;
    while i < segments.len() {
        if !small(&segments[i]) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut rows = segments[i].rows();
        while j < segments.len()
            && small(&segments[j])
            && rows + segments[j].rows() <= config.segment_max_rows as u64
        {
            rows += segments[j].rows();
            j += 1;
        }
        if j - i >= 2 {
            return Some(i..j);
        }
        i = j;
    }
    None
}

/// How many segments from the front are wholly older than retention. Stops
/// at the first young one so that the log stays a contiguous range.
fn expired_prefix(segments: &[Segment], config: &StorageConfig, now_us: i64) -> usize {
    let Some(retention) = config.retention else {
        return 0;
    };
    let cutoff = now_us.saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX));
    segments
        .iter()
        .take_while(|s| s.max_occurred_at_us < cutoff)
        .count()
}

/// An immutable view of an org's events: cheap to clone, `Send + Sync`.
/// The default is an empty log.
#[derive(Clone, Debug, Default)]
pub struct OrgSnapshot {
    chunks: Arc<[Chunk]>,
    /// The sealed segments among `chunks`, in order (the unsealed tail
    /// follows the last).
    segments: Arc<[SegmentStats]>,
    first_offset: u64,
    end_offset: u64,
}

impl OrgSnapshot {
    /// Batches in offset order, contiguous from `first_offset` to `end_offset`.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// The sealed segments' offsets, time ranges and summaries, in offset
    /// order; their rows are the first chunks.
    pub fn segments(&self) -> &[SegmentStats] {
        &self.segments
    }

    pub fn first_offset(&self) -> u64 {
        self.first_offset
    }

    pub fn end_offset(&self) -> u64 {
        self.end_offset
    }

    pub fn num_rows(&self) -> usize {
        (self.end_offset - self.first_offset) as usize
    }
}

/// Chunks merged at once, and the number of merge tiers: a row is copied at
/// most `MERGE_TIERS` times before its chunk holds `MERGE_RUN^MERGE_TIERS`
/// rows and is left alone until sealing.
const MERGE_RUN: usize = 16;
const MERGE_TIERS: u32 = 3;

fn merge_tier(rows: usize) -> u32 {
    let mut tier = 0;
    let mut bound = MERGE_RUN;
    while rows >= bound && tier < MERGE_TIERS {
        tier += 1;
        bound *= MERGE_RUN;
    }
    tier
}

/// Merges runs of small chunks at the memtable's tail, so that many tiny
/// Removes from `memtable` every row below `seal_end` (just sealed);
/// returns the rows and bytes removed. Appends go on while a seal is in
/// flight, and [`coalesce_tail`] may meanwhile have merged sealed chunks
/// with newer ones: such a chunk straddles `seal_end` and keeps only its
/// unsealed part. (Before this, the sealed part stayed in the memtable, was
/// sealed again, and a compaction over both copies wrote a segment with
/// twice its rows — seen once in CI as a refused restart.)
pub(crate) fn drain_sealed(memtable: &mut Vec<Chunk>, seal_end: u64) -> (u64, u64) {
    let whole = memtable
        .iter()
        .take_while(|c| c.end_offset() <= seal_end)
        .count();
    let (mut rows, bytes) = memtable.drain(..whole).fold((0, 0), |(r, b), c| {
        (
            r + c.batch.num_rows() as u64,
            b + c.batch.get_array_memory_size() as u64,
        )
    });
    if let Some(c) = memtable.first_mut()
        && c.first_offset < seal_end
    {
        let cut = (seal_end - c.first_offset) as usize;
        // The slice keeps the whole buffers alive: their bytes are counted
        // off when the rest is sealed.
        let rest = c.batch.slice(cut, c.batch.num_rows() - cut);
        rows += cut as u64;
        *c = Chunk {
            first_offset: seal_end,
            batch: rest,
        };
    }
    (rows, bytes)
}

/// appends (single-event HTTP requests) do not leave thousands of one-row
/// batches for every reader to walk. Tiered: `MERGE_RUN` chunks of the same
/// tier become one chunk of the next. Returns the change in memory held.
fn coalesce_tail(memtable: &mut Vec<Chunk>) -> i64 {
    let mut delta = 0i64;
    loop {
        let n = memtable.len();
        if n < MERGE_RUN {
            return delta;
        }
        let tail = &memtable[n - MERGE_RUN..];
        let tier = merge_tier(tail[MERGE_RUN - 1].batch.num_rows());
        if tier >= MERGE_TIERS || !tail.iter().all(|c| merge_tier(c.batch.num_rows()) == tier) {
            return delta;
        }
        let batches: Vec<RecordBatch> = tail.iter().map(|c| c.batch.clone()).collect();
        let old: u64 = batches
            .iter()
            .map(|b| b.get_array_memory_size() as u64)
            .sum();
        let Ok(merged) = arrow_select::concat::concat_batches(&batches[0].schema(), &batches)
        else {
            return delta;
        };
        let first_offset = tail[0].first_offset;
        let new = merged.get_array_memory_size() as u64;
        memtable.truncate(n - MERGE_RUN);
        memtable.push(Chunk {
            first_offset,
            batch: merged,
        });
        delta += new as i64 - old as i64;
    }
}
