//! The I/O thread: the only place that touches the WAL after `Store::open`
//! (segments are written by the segment thread, with [`write_sealed`] and
//! [`compact`]: a seal asks this thread to rotate the WAL first and to
//! delete the WAL files the new segments cover afterwards).
//!
//! It blocks on a channel, then drains everything queued, so appends that
//! arrive while one fsync is in progress are written together and share the
//! next fsync (group commit). Requests for one org are handled in the order
//! sent, which is what keeps WAL offsets contiguous.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use arrow_array::RecordBatch;
use honeycell_types::OrgId;
use tokio::sync::oneshot;

use crate::Chunk;
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::segment::{self, Segment};
use crate::wal;

/// Most requests handled as one group: bounds the latency of the first
/// append of a group when the queue is very long.
const MAX_GROUP: usize = 4096;

pub(crate) type Reply<T> = oneshot::Sender<T>;

pub(crate) enum Request {
    Open {
        org: OrgId,
        /// Collect the ids of events ingested since then (`dedup.rs`);
        /// `None`: deduplication is off.
        dedup_since_us: Option<i64>,
        reply: Reply<Result<Recovered>>,
    },
    Append {
        org: OrgId,
        first_offset: u64,
        end_offset: u64,
        frame: Vec<u8>,
        reply: Reply<Result<()>>,
    },
    /// Before a seal: start a new WAL file, so that the files before it
    /// end inside what the seal covers. Answers the org's segment
    /// directory, where the segment thread then writes.
    Rotate {
        org: OrgId,
        reply: Reply<Result<PathBuf>>,
    },
    /// After a seal: delete the WAL files its segments cover.
    Sealed {
        org: OrgId,
        seal_end: u64,
        reply: Reply<Result<()>>,
    },
    DropSegments {
        org: OrgId,
        paths: Vec<PathBuf>,
        /// The org's first offset once the segments are gone.
        new_first: u64,
        reply: Reply<DropOutcome>,
    },
    Shutdown {
        reply: Reply<Result<()>>,
    },
    /// Blocks the I/O thread until the sender side is dropped or sends, so
    /// that tests can queue requests deterministically.
    #[cfg(test)]
    Hold {
        held: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    },
}

/// Deletion stops at the first failure so that what is left on disk is
/// still a contiguous run of segments.
pub(crate) struct DropOutcome {
    pub deleted: usize,
    pub error: Option<Error>,
}

/// Counters shared between the caller side and the I/O thread.
#[derive(Default, Debug)]
pub(crate) struct IoCounters {
    pub queued_writes: AtomicUsize,
    pub queued_bytes: AtomicU64,
    pub fsyncs: AtomicU64,
}

/// Per-org state the I/O thread publishes to the caller side.
#[derive(Default, Debug)]
pub(crate) struct OrgShared {
    /// Appends below this offset are durable (or written, under interval
    /// durability) and may become visible.
    pub durable_end: AtomicU64,
    pub wal_bytes: AtomicU64,
}

/// What recovery found for one org.
pub(crate) struct Recovered {
    pub segments: Vec<Segment>,
    pub memtable: Vec<Chunk>,
    pub end_offset: u64,
    pub shared: Arc<OrgShared>,
    /// Event ids that may have been ingested within the dedup window, with
    /// a time no earlier than their ingest, oldest first.
    pub recent_ids: Vec<(i64, Vec<crate::dedup::Id>)>,
}

struct WalFile {
    first: u64,
    path: PathBuf,
    bytes: u64,
}

struct OrgIo {
    wal_dir: PathBuf,
    seg_dir: PathBuf,
    /// Oldest first; the last one is open for appends.
    files: Vec<WalFile>,
    active: File,
    written_end: u64,
    staged: Vec<u8>,
    staged_end: u64,
    dirty: bool,
    failed: Option<String>,
    shared: Arc<OrgShared>,
}

impl OrgIo {
    fn active_path(&self) -> PathBuf {
        self.files
            .last()
            .map(|f| f.path.clone())
            .unwrap_or_else(|| self.wal_dir.clone())
    }

    fn publish_wal_bytes(&self) {
        let total = self.files.iter().map(|f| f.bytes).sum();
        self.shared.wal_bytes.store(total, Ordering::Release);
    }
}

struct PendingAck {
    org: OrgId,
    frame_len: u64,
    reply: Reply<Result<()>>,
}

pub(crate) struct IoThread {
    data_dir: PathBuf,
    durability: Durability,
    counters: Arc<IoCounters>,
    orgs: HashMap<OrgId, OrgIo>,
    next_sync: Option<Instant>,
}

impl IoThread {
    pub fn new(data_dir: PathBuf, durability: Durability, counters: Arc<IoCounters>) -> Self {
        Self {
            data_dir,
            durability,
            counters,
            orgs: HashMap::new(),
            next_sync: None,
        }
    }

    pub fn run(mut self, rx: Receiver<Request>) {
        loop {
            let first = match self.next_sync {
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(req) => req,
                        Err(RecvTimeoutError::Timeout) => {
                            // Failures are logged and fail the org's next appends.
                            let _ = self.sync_dirty();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(req) => req,
                    Err(_) => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::new();
            let mut shutdown = None;
            for req in batch {
                match req {
                    Request::Append {
                        org,
                        first_offset,
                        end_offset,
                        frame,
                        reply,
                    } => {
                        if let Some(ack) = self.stage(org, first_offset, end_offset, frame, reply) {
                            appends.push(ack);
                        }
                    }
                    Request::Shutdown { reply } => {
                        shutdown = Some(reply);
                        break;
                    }
                    other => {
                        self.commit(std::mem::take(&mut appends));
                        self.handle(other);
                    }
                }
            }
            self.commit(appends);
            if self.next_sync.is_some_and(|d| d <= Instant::now()) {
                let _ = self.sync_dirty();
            }
            if let Some(reply) = shutdown {
                let result = self.sync_dirty();
                let _ = reply.send(result);
                return;
            }
        }
        let _ = self.sync_dirty();
    }

    /// Append a frame to its org's staging buffer; answers at once (and
    /// returns `None`) when the org cannot take it.
    fn stage(
        &mut self,
        org: OrgId,
        first_offset: u64,
        end_offset: u64,
        frame: Vec<u8>,
        reply: Reply<Result<()>>,
    ) -> Option<PendingAck> {
        let frame_len = frame.len() as u64;
        let refuse = |counters: &IoCounters, reply: Reply<Result<()>>, error: Error| {
            counters.queued_writes.fetch_sub(1, Ordering::AcqRel);
            counters.queued_bytes.fetch_sub(frame_len, Ordering::AcqRel);
            let _ = reply.send(Err(error));
        };
        let Some(o) = self.orgs.get_mut(&org) else {
            refuse(&self.counters, reply, Error::Closed);
            return None;
        };
        if o.failed.is_none() && first_offset != o.staged_end {
            o.failed = Some(format!(
                "append at offset {first_offset} while the log ends at {}",
                o.staged_end
            ));
        }
        if let Some(reason) = &o.failed {
            let error = Error::OrgFailed {
                org,
                reason: reason.clone(),
            };
            refuse(&self.counters, reply, error);
            return None;
        }
        o.staged.extend_from_slice(&frame);
        o.staged_end = end_offset;
        Some(PendingAck {
            org,
            frame_len,
            reply,
        })
    }

    /// Write every staged buffer, fsync each touched file once, then answer.
    fn commit(&mut self, acks: Vec<PendingAck>) {
        if acks.is_empty() {
            return;
        }
        let mut touched: Vec<OrgId> = Vec::new();
        for ack in &acks {
            if touched.last() != Some(&ack.org) && !touched.contains(&ack.org) {
                touched.push(ack.org.clone());
            }
        }
        let mut to_sync: Vec<OrgId> = Vec::new();
        for org in &touched {
            let Some(o) = self.orgs.get_mut(org) else {
                continue;
            };
            if o.staged.is_empty() {
                continue;
            }
            let staged = std::mem::take(&mut o.staged);
            let path = o.active_path();
            if let Err(e) = o.active.write_all(&staged) {
                tracing::error!(org = %org, path = %path.display(), error = %e, "WAL write failed; org refuses writes until restart");
                o.failed = Some(format!("WAL write to {} failed: {e}", path.display()));
                continue;
            }
            if let Some(f) = o.files.last_mut() {
                f.bytes += staged.len() as u64;
            }
            o.publish_wal_bytes();
            match self.durability {
                Durability::Fsync => to_sync.push(org.clone()),
                Durability::Interval(every) => {
                    o.dirty = true;
                    self.next_sync.get_or_insert_with(|| Instant::now() + every);
                    o.written_end = o.staged_end;
                    o.shared.durable_end.store(o.written_end, Ordering::Release);
                }
            }
        }
        // The fsyncs of different orgs' files run concurrently: one after
        // the other, a commit touching k orgs would wait k fsync latencies.
        let synced = {
            let files: Vec<(&OrgId, &File)> = to_sync
                .iter()
                .filter_map(|org| self.orgs.get(org).map(|o| (org, &o.active)))
                .collect();
            sync_all(&files)
        };
        for (org, result) in synced {
            let Some(o) = self.orgs.get_mut(&org) else {
                continue;
            };
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(()) => {
                    o.written_end = o.staged_end;
                    o.shared.durable_end.store(o.written_end, Ordering::Release);
                }
                Err(e) => {
                    // After a failed fsync the kernel may have dropped the
                    // dirty pages: nothing written since can be trusted.
                    let path = o.active_path();
                    tracing::error!(org = %org, path = %path.display(), error = %e, "WAL fsync failed; org refuses writes until restart");
                    o.failed = Some(format!("WAL fsync of {} failed: {e}", path.display()));
                }
            }
        }
        for ack in acks {
            self.counters.queued_writes.fetch_sub(1, Ordering::AcqRel);
            self.counters
                .queued_bytes
                .fetch_sub(ack.frame_len, Ordering::AcqRel);
            let result = match self.orgs.get(&ack.org).and_then(|o| o.failed.clone()) {
                None => Ok(()),
                Some(reason) => Err(Error::OrgFailed {
                    org: ack.org,
                    reason,
                }),
            };
            let _ = ack.reply.send(result);
        }
    }

    fn sync_dirty(&mut self) -> Result<()> {
        self.next_sync = None;
        let mut first_error = None;
        for (org, o) in &mut self.orgs {
            if !o.dirty {
                continue;
            }
            o.dirty = false;
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = o.active.sync_data() {
                let path = o.active_path();
                tracing::error!(org = %org, path = %path.display(), error = %e, "WAL fsync failed; org refuses writes until restart");
                o.failed = Some(format!("WAL fsync of {} failed: {e}", path.display()));
                first_error.get_or_insert(Error::io(path, e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Open {
                org,
                dedup_since_us,
                reply,
            } => {
                let result = self.open(&org, dedup_since_us);
                let _ = reply.send(result);
            }
            Request::Rotate { org, reply } => {
                let _ = reply.send(self.rotate(&org));
            }
            Request::Sealed {
                org,
                seal_end,
                reply,
            } => {
                let _ = reply.send(self.sealed(&org, seal_end));
            }
            Request::DropSegments {
                org,
                paths,
                new_first,
                reply,
            } => {
                let outcome = self.drop_segments(&org, &paths, new_first);
                let _ = reply.send(outcome);
            }
            #[cfg(test)]
            Request::Hold { held, release } => {
                let _ = held.send(());
                let _ = release.recv();
            }
            // Handled by `run`.
            Request::Append { .. } | Request::Shutdown { .. } => {}
        }
    }

    fn org_mut(&mut self, org: &OrgId) -> Result<&mut OrgIo> {
        let o = self.orgs.get_mut(org).ok_or(Error::Closed)?;
        match &o.failed {
            Some(reason) => Err(Error::OrgFailed {
                org: org.clone(),
                reason: reason.clone(),
            }),
            None => Ok(o),
        }
    }

    fn open(&mut self, org: &OrgId, dedup_since_us: Option<i64>) -> Result<Recovered> {
        if self.orgs.remove(org).is_some() {
            tracing::warn!(org = %org, "org reopened; recovering it from disk again");
        }
        let (io, mut recovered) = recover(&self.data_dir, org)?;
        if let Some(since) = dedup_since_us {
            recovered.recent_ids = recent_ids(&recovered, since);
        }
        self.orgs.insert(org.clone(), io);
        Ok(recovered)
    }

    fn rotate(&mut self, org: &OrgId) -> Result<PathBuf> {
        let fsyncs = &self.counters.fsyncs;
        let o = self.orgs.get_mut(org).ok_or(Error::Closed)?;
        let active_first = o.files.last().map_or(0, |f| f.first);
        if o.failed.is_none() && o.written_end > active_first {
            if o.dirty {
                fsyncs.fetch_add(1, Ordering::Relaxed);
                o.active
                    .sync_data()
                    .map_err(|e| Error::io(o.active_path(), e))?;
                o.dirty = false;
            }
            let path = o.wal_dir.join(wal_file_name(o.written_end));
            let file = create_wal_file(&path)?;
            sync_dir(&o.wal_dir)?;
            o.active = file;
            o.files.push(WalFile {
                first: o.written_end,
                path,
                bytes: 0,
            });
        }
        Ok(o.seg_dir.clone())
    }

    fn sealed(&mut self, org: &OrgId, seal_end: u64) -> Result<()> {
        let o = self.orgs.get_mut(org).ok_or(Error::Closed)?;
        let mut removed = false;
        while o.files.len() > 1 && o.files[1].first <= seal_end {
            let f = o.files.remove(0);
            fs::remove_file(&f.path).map_err(|e| Error::io(&f.path, e))?;
            removed = true;
        }
        if removed {
            sync_dir(&o.wal_dir)?;
        }
        o.publish_wal_bytes();
        Ok(())
    }

    fn drop_segments(&mut self, org: &OrgId, paths: &[PathBuf], new_first: u64) -> DropOutcome {
        let org_dir = org_dir(&self.data_dir, org);
        let o = match self.org_mut(org) {
            Ok(o) => o,
            Err(e) => {
                return DropOutcome {
                    deleted: 0,
                    error: Some(e),
                };
            }
        };
        // The WAL may still hold frames of dropped segments (appends that
        // shared a WAL file with unsealed ones); the floor keeps recovery
        // from bringing them back once no segment is left to say where the
        // log starts.
        if let Err(e) = write_floor(&org_dir, new_first) {
            return DropOutcome {
                deleted: 0,
                error: Some(e),
            };
        }
        let mut deleted = 0;
        let mut error = None;
        for path in paths {
            if let Err(e) = fs::remove_file(path) {
                error = Some(Error::io(path, e));
                break;
            }
            deleted += 1;
        }
        if deleted > 0
            && let Err(e) = sync_dir(&o.seg_dir)
        {
            error.get_or_insert(e);
        }
        DropOutcome { deleted, error }
    }
}

/// Seals `chunks` into segments of at most `max_rows` rows in `seg_dir`
/// (on the segment thread): written, the directory fsynced, mapped back.
/// On failure no segment is left behind.
pub(crate) fn write_sealed(
    seg_dir: &Path,
    chunks: &[Chunk],
    max_rows: usize,
) -> Result<Vec<Segment>> {
    let Some(first) = chunks.first() else {
        return Ok(Vec::new());
    };
    let mut written = Vec::new();
    let result = (|| {
        for (first, end, batches) in split_rows(chunks, first.first_offset, max_rows) {
            written.push((
                segment::write_segment(seg_dir, first, end, &batches)?,
                first,
                end,
            ));
        }
        sync_dir(seg_dir)?;
        written
            .iter()
            .map(|(path, first, end)| segment::load_segment(path, *first, *end))
            .collect::<Result<Vec<_>>>()
    })();
    if result.is_err() {
        for (path, _, _) in &written {
            let _ = fs::remove_file(path);
        }
    }
    result
}

/// Merges adjacent `inputs` into one segment in `seg_dir` and deletes them
/// (on the segment thread).
pub(crate) fn compact(seg_dir: &Path, inputs: &[Segment]) -> Result<Segment> {
    let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
        return Err(Error::corrupt(seg_dir, 0, "compaction of no segments"));
    };
    let batches: Vec<RecordBatch> = inputs
        .iter()
        .flat_map(|s| s.chunks.iter().map(|c| c.batch.clone()))
        .collect();
    let path = segment::write_segment(seg_dir, first.first, last.end, &batches)?;
    sync_dir(seg_dir)?;
    let merged = segment::load_segment(&path, first.first, last.end)?;
    // A crash from here on leaves the covering segment next to the
    // covered ones; recovery keeps the covering one.
    for s in inputs {
        fs::remove_file(&s.path).map_err(|e| Error::io(&s.path, e))?;
    }
    sync_dir(seg_dir)?;
    Ok(merged)
}

/// Cut contiguous chunks into runs of at most `max_rows` rows.
fn split_rows(chunks: &[Chunk], first: u64, max_rows: usize) -> Vec<(u64, u64, Vec<RecordBatch>)> {
    let max_rows = max_rows.max(1);
    let mut out = Vec::new();
    let mut current: Vec<RecordBatch> = Vec::new();
    let mut current_first = first;
    let mut current_rows = 0usize;
    for chunk in chunks {
        let mut start = 0;
        let rows = chunk.batch.num_rows();
        while start < rows {
            let take = (max_rows - current_rows).min(rows - start);
            current.push(chunk.batch.slice(start, take));
            current_rows += take;
            start += take;
            if current_rows == max_rows {
                let end = current_first + current_rows as u64;
                out.push((current_first, end, std::mem::take(&mut current)));
                current_first = end;
                current_rows = 0;
            }
        }
    }
    if current_rows > 0 {
        out.push((current_first, current_first + current_rows as u64, current));
    }
    out
}

pub(crate) fn wal_file_name(first: u64) -> String {
    format!("wal-{first:020}.log")
}

fn parse_wal_file_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn create_wal_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

pub(crate) fn org_dir(data_dir: &Path, org: &OrgId) -> PathBuf {
    data_dir.join("orgs").join(org.as_str())
}

const FLOOR_FILE: &str = "first-offset";

/// Persist the lowest offset the org still holds (written by retention).
fn write_floor(org_dir: &Path, first: u64) -> Result<()> {
    let path = org_dir.join(FLOOR_FILE);
    let tmp = org_dir.join(format!("{FLOOR_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(first.to_string().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(org_dir)
}

fn read_floor(org_dir: &Path) -> Result<Option<u64>> {
    let path = org_dir.join(FLOOR_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| Error::corrupt(&path, 0, format!("not an offset: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Rebuild one org's state from its directory; see the crate docs for the
/// rules. Repairs what a crash can leave behind (temporary files, segments
/// covered by a compacted one, a torn WAL tail) and refuses what it cannot
/// explain (overlapping or missing ranges, undecodable segments).
fn recover(data_dir: &Path, org: &OrgId) -> Result<(OrgIo, Recovered)> {
    let dir = org_dir(data_dir, org);
    let wal_dir = dir.join("wal");
    let seg_dir = dir.join("segments");
    create_dir(&dir)?;
    create_dir(&wal_dir)?;
    create_dir(&seg_dir)?;

    let floor = read_floor(&dir)?;
    let mut found = Vec::new();
    let mut seg_dir_changed = false;
    for (name, path) in list_dir(&seg_dir)? {
        if name.ends_with(".tmp") {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            seg_dir_changed = true;
        } else if let Some((first, end)) = segment::parse_segment_file_name(&name) {
            if floor.is_some_and(|floor| end <= floor) {
                // Retention recorded the drop but crashed before deleting.
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                seg_dir_changed = true;
                continue;
            }
            found.push((first, end, path));
        } else {
            tracing::warn!(path = %path.display(), "ignoring unknown file among segments");
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut kept: Vec<(u64, u64, PathBuf)> = Vec::new();
    for (first, end, path) in found {
        if let Some((last_first, last_end, last_path)) = kept.last() {
            if first >= *last_first && end <= *last_end {
                tracing::warn!(covered = %path.display(), by = %last_path.display(), "removing segment left over from an interrupted compaction");
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                seg_dir_changed = true;
                continue;
            }
            if first != *last_end {
                return Err(Error::corrupt(
                    &path,
                    0,
                    format!(
                        "segment starts at offset {first} but the previous one ({}) ends at {last_end}",
                        last_path.display()
                    ),
                ));
            }
        }
        kept.push((first, end, path));
    }
    if seg_dir_changed {
        sync_dir(&seg_dir)?;
    }
    let segments = kept
        .iter()
        .map(|(first, end, path)| segment::load_segment(path, *first, *end))
        .collect::<Result<Vec<_>>>()?;
    let seg_end = segments.last().map(|s| s.end);

    let mut wal_paths: Vec<(u64, PathBuf)> = list_dir(&wal_dir)?
        .into_iter()
        .filter_map(|(name, path)| parse_wal_file_name(&name).map(|first| (first, path)))
        .collect();
    wal_paths.sort();

    let mut memtable: Vec<Chunk> = Vec::new();
    let mut next = seg_end.or(floor);
    let mut files: Vec<WalFile> = Vec::new();
    let mut broken = false;
    let mut wal_dir_changed = false;
    for (name_first, path) in wal_paths {
        if broken {
            let aside = path.with_extension("log.corrupt");
            tracing::warn!(path = %path.display(), "WAL file follows a corrupt one and cannot be replayed in order; moving it aside");
            fs::rename(&path, &aside).map_err(|e| Error::io(&path, e))?;
            wal_dir_changed = true;
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let (frames, mut bad) = wal::scan(&bytes);
        for frame in frames {
            let rows = frame.batch.num_rows() as u64;
            let frame_end = frame.first_offset + rows;
            let at = *next.get_or_insert(frame.first_offset);
            if frame.first_offset > at {
                bad = Some(wal::BadFrame {
                    pos: frame.pos,
                    reason: format!(
                        "frame starts at offset {} but {at} was expected",
                        frame.first_offset
                    ),
                });
                break;
            }
            if frame_end <= at {
                continue;
            }
            let skip = (at - frame.first_offset) as usize;
            memtable.push(Chunk {
                first_offset: at,
                batch: frame.batch.slice(skip, rows as usize - skip),
            });
            next = Some(frame_end);
        }
        let good_len = match &bad {
            None => bytes.len() as u64,
            Some(b) => {
                tracing::warn!(
                    org = %org,
                    path = %path.display(),
                    pos = b.pos,
                    reason = %b.reason,
                    dropped_bytes = bytes.len() as u64 - b.pos,
                    "torn or corrupt WAL tail; truncating it (expected after a crash)"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?;
                f.set_len(b.pos)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Error::io(&path, e))?;
                broken = true;
                b.pos
            }
        };
        files.push(WalFile {
            first: name_first,
            path,
            bytes: good_len,
        });
    }
    let end_offset = next.unwrap_or(0).max(files.last().map_or(0, |f| f.first));
    // Files wholly below the segments' end were sealed before a crash that
    // came ahead of their deletion.
    let covered_end = seg_end.unwrap_or(0);
    while files.len() > 1 && files[1].first <= covered_end {
        let f = files.remove(0);
        fs::remove_file(&f.path).map_err(|e| Error::io(&f.path, e))?;
        wal_dir_changed = true;
    }
    if files.is_empty() {
        let path = wal_dir.join(wal_file_name(end_offset));
        files.push(WalFile {
            first: end_offset,
            path,
            bytes: 0,
        });
        wal_dir_changed = true;
    }
    let active_path = files.last().map(|f| f.path.clone()).unwrap_or_default();
    let active = create_wal_file(&active_path)?;
    if wal_dir_changed {
        sync_dir(&wal_dir)?;
    }

    let shared = Arc::new(OrgShared {
        durable_end: AtomicU64::new(end_offset),
        wal_bytes: AtomicU64::new(0),
    });
    let io = OrgIo {
        wal_dir,
        seg_dir,
        files,
        active,
        written_end: end_offset,
        staged: Vec::new(),
        staged_end: end_offset,
        dirty: false,
        failed: None,
        shared: shared.clone(),
    };
    io.publish_wal_bytes();
    tracing::debug!(org = %org, segments = segments.len(), replayed_chunks = memtable.len(), end_offset, "org recovered");
    Ok((
        io,
        Recovered {
            segments,
            memtable,
            end_offset,
            shared,
            recent_ids: Vec::new(),
        },
    ))
}

/// The ids of the recovered events that may have been ingested since
/// `since_us`, for the dedup index: those of every segment whose file was
/// modified since then (written when sealed, rewritten when compacted, so
/// never before its rows were ingested), taken as ingested at that time,
/// and those replayed from the WAL, taken as ingested now. Only the
/// `event_id` column is read.
fn recent_ids(recovered: &Recovered, since_us: i64) -> Vec<(i64, Vec<crate::dedup::Id>)> {
    let ids = |chunk: &Chunk| {
        crate::dedup::batch_ids(&chunk.batch)
            .into_iter()
            .flatten()
            .collect()
    };
    let now = honeycell_types::now_us();
    let mut out = Vec::new();
    for segment in &recovered.segments {
        let modified_us = fs::metadata(&segment.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(i64::MAX, |d| {
                i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
            });
        if modified_us >= since_us {
            let at = modified_us.min(now);
            out.extend(segment.chunks.iter().map(|c| (at, ids(c))));
        }
    }
    out.extend(recovered.memtable.iter().map(|c| (now, ids(c))));
    out
}

/// Most threads used to fsync one commit's files at once.
const SYNC_THREADS: usize = 8;

/// `fdatasync`s every file, concurrently when there are several, and
/// returns each org's result.
fn sync_all(files: &[(&OrgId, &File)]) -> Vec<(OrgId, std::io::Result<()>)> {
    if files.len() <= 1 {
        return files
            .iter()
            .map(|(org, f)| ((*org).clone(), f.sync_data()))
            .collect();
    }
    let per_thread = files.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(org, f)| ((*org).clone(), f.sync_data()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(files.chunks(per_thread))
            .flat_map(|(h, chunk)| {
                h.join().unwrap_or_else(|_| {
                    chunk
                        .iter()
                        .map(|(org, _)| {
                            (
                                (*org).clone(),
                                Err(std::io::Error::other("fsync thread panicked")),
                            )
                        })
                        .collect()
                })
            })
            .collect()
    })
}
