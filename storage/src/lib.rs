//! Per-org append-only event logs stored as Arrow.
//!
//! Each org's log is a sequence of events numbered by absolute offsets
//! (0, 1, 2, …) that never change, so an offset is a stable query cursor.
//! Appends go to a write-ahead log (checksummed frames holding Arrow IPC
//! streams) and, once durable, into an in-memory memtable; maintenance seals
//! the memtable into immutable Arrow IPC *files* (segments) that are read
//! back zero-copy through mmap, merges small adjacent segments, and drops
//! whole old segments from the front for retention. On disk:
//!
//! ```text
//! {data_dir}/orgs/{org_id}/wal/wal-{first_offset:020}.log
//! {data_dir}/orgs/{org_id}/segments/seg-{first_offset:020}-{end_offset:020}.arrow   (end exclusive)
//! {data_dir}/orgs/{org_id}/first-offset                                               (written by retention)
//! ```
//!
//! A [`Store`] belongs to one cell. All file I/O after [`Store::open`] runs on
//! two dedicated OS threads per store, so an fsync never stalls the cell's
//! runtime: the I/O thread (WAL appends, recovery, WAL rotation and
//! deletion, retention) and the segment thread (writing segments when
//! sealing and compacting, which takes long enough that appends must not
//! queue behind it); the cell side is single-threaded and lock-free (`Rc`/`RefCell`),
//! and talks to the I/O thread over a channel, getting answers through
//! `tokio::sync::oneshot`. The I/O thread drains whatever is queued before
//! writing, so concurrent appends share one fsync per file (group commit).
//! Readers take an [`OrgSnapshot`]: an `Arc` of record batches that is
//! `Send + Sync` and can be handed to a query engine on another thread.
//!
//! Crash safety: segments are written under a temporary name, fsynced,
//! renamed and their directory fsynced; WAL files are deleted only once
//! segments cover them. Recovery (in [`Store::org`]) removes temporary files
//! and segments made redundant by an interrupted compaction, then replays WAL
//! frames past the last segment and truncates a torn tail.
//!
//! This crate deliberately knows nothing of HTTP, gRPC, tenants' auth, quotas
//! policy or cells' routing: it takes an already verified `honeycell_types::OrgId` and
//! reports bytes and counts for others to enforce limits with. It does hold
//! the rules every event obeys (`rules.rs`), applied by both ways a batch is
//! made (`event.rs`), so that every protocol refuses the same events. Read
//! `store.rs` next for the append/visibility rules, then `io.rs` for the I/O
//! thread, `wal.rs` for the frame format and `segment.rs` for the mmap path.

mod config;
mod dedup;
mod error;
mod event;
mod io;
mod ipc;
mod rules;
mod segment;
mod store;
mod summary;
mod wal;

#[cfg(test)]
mod tests;

use arrow_array::RecordBatch;

pub use config::{Durability, DurabilityConfig, StorageConfig, parse_retention};
pub use error::{Error, Result};
pub use ipc::{IpcDecoder, MAX_ROWS_PER_MESSAGE, decoding_untrusted};

/// Entry points for the fuzz targets (feature `fuzzing`): recovery's
/// readers over bytes no server wrote.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::wal::fuzzing::{frame as wal_frame, scan as scan_wal};

    /// Loads a segment file as recovery does; its row count.
    pub fn load_segment(path: &std::path::Path) -> crate::Result<u64> {
        crate::segment::load_segment(path, 0, u64::MAX).map(|s| s.rows())
    }
}
pub use event::{
    EventType, InvalidEventType, NewEvent, build_batch, col, event_schema, normalize_batch,
};
pub use segment::SEGMENT_BATCH_ROWS;
pub use store::{AppendAck, MaintenanceReport, OrgLog, OrgSnapshot, Store};
pub use summary::{MAX_SUMMARY_ROWS, SegmentStats, Summary, SummaryRow};

/// A run of consecutive events starting at `first_offset`. Chunks of sealed
/// segments are zero-copy views of the segment's mapping.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub first_offset: u64,
    pub batch: RecordBatch,
}

impl Chunk {
    /// One past the last offset in the chunk.
    pub fn end_offset(&self) -> u64 {
        self.first_offset + self.batch.num_rows() as u64
    }
}
