//! Sealed segments: immutable Arrow IPC *files*, read zero-copy through mmap.
//!
//! A segment is only ever written under a temporary name, fsynced, renamed
//! and its directory fsynced, so a file with a final name is complete; after
//! that it is never modified, only deleted, which is what makes mapping it
//! sound.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::convert::fb_to_schema;
use arrow_ipc::reader::{FileDecoder, read_footer_length};
use arrow_ipc::root_as_footer;
use arrow_ipc::writer::FileWriter;
use memmap2::Mmap;

use crate::Chunk;
use crate::error::{Error, Result};
use crate::event::event_schema;
use crate::summary::{self, FOOTER_KEY, SegmentStats, Summary};

/// Rows per record batch inside a segment file: large enough for vectorised
/// scans, small enough that a reader can skip by batch.
pub const SEGMENT_BATCH_ROWS: usize = 65_536;

pub(crate) fn segment_file_name(first: u64, end: u64) -> String {
    format!("seg-{first:020}-{end:020}.arrow")
}

pub(crate) fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("seg-")?.strip_suffix(".arrow")?;
    let (first, end) = rest.split_once('-')?;
    let (first, end) = (first.parse().ok()?, end.parse().ok()?);
    (first < end).then_some((first, end))
}

/// A sealed segment as held in memory: its batches borrow the mapping.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub first: u64,
    pub end: u64,
    pub path: PathBuf,
    pub file_bytes: u64,
    /// Newest `occurred_at` in the segment; retention compares it.
    pub max_occurred_at_us: i64,
    /// Oldest `occurred_at` in the segment.
    pub min_occurred_at_us: i64,
    /// Counts by time bucket and type (`summary.rs`), from the footer.
    pub summary: Option<Arc<Summary>>,
    pub chunks: Vec<Chunk>,
    #[cfg_attr(not(test), allow(dead_code))]
    pub mmap: Arc<Mmap>,
}

impl Segment {
    pub fn rows(&self) -> u64 {
        self.end - self.first
    }

    pub fn stats(&self) -> SegmentStats {
        SegmentStats {
            first: self.first,
            end: self.end,
            min_occurred_at_us: self.min_occurred_at_us,
            max_occurred_at_us: self.max_occurred_at_us,
            summary: self.summary.clone(),
        }
    }
}

/// Write rows `[first, end)` (the given batches, in order) as a segment in
/// `dir`, crash-safely, with their summary in the footer. Returns the final
/// path. The caller fsyncs `dir`
/// (once for several segments).
pub(crate) fn write_segment(
    dir: &Path,
    first: u64,
    end: u64,
    batches: &[RecordBatch],
) -> Result<PathBuf> {
    let name = segment_file_name(first, end);
    let path = dir.join(&name);
    // A temporary name of its own per write, so that no two writes of the
    // same range can ever share a `.tmp` file; each rename is atomic.
    // Recovery removes any `*.tmp`.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{name}.{}-{n}.tmp", std::process::id()));
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let schema = event_schema();
    let mut writer = FileWriter::try_new(BufWriter::new(file), &schema)?;
    if let Some(summary) = summary::summarise(batches) {
        writer.write_metadata(FOOTER_KEY, summary.encode());
    }
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    for batch in batches {
        let mut start = 0;
        while start < batch.num_rows() {
            let take = (SEGMENT_BATCH_ROWS - pending_rows).min(batch.num_rows() - start);
            pending.push(batch.slice(start, take));
            pending_rows += take;
            start += take;
            if pending_rows == SEGMENT_BATCH_ROWS {
                write_coalesced(&mut writer, &pending)?;
                pending.clear();
                pending_rows = 0;
            }
        }
    }
    if pending_rows > 0 {
        write_coalesced(&mut writer, &pending)?;
    }
    writer.finish()?;
    let mut buffered = writer.into_inner()?;
    buffered.flush().map_err(|e| Error::io(&tmp, e))?;
    let file = buffered
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

fn write_coalesced<W: Write>(writer: &mut FileWriter<W>, batches: &[RecordBatch]) -> Result<()> {
    if let [one] = batches {
        writer.write(one)?;
    } else {
        writer.write(&arrow_select::concat::concat_batches(
            &event_schema(),
            batches,
        )?)?;
    }
    Ok(())
}

/// Map a segment file and decode its batches without copying: every column
/// buffer points into the mapping, which lives as long as any batch does.
pub(crate) fn load_segment(path: &Path, first: u64, end: u64) -> Result<Segment> {
    let corrupt = |offset: u64, reason: String| Error::corrupt(path, offset, reason);
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_bytes < 16 {
        return Err(corrupt(
            0,
            format!("{file_bytes} bytes is too short for an Arrow file"),
        ));
    }
    // SAFETY: segments are immutable once renamed into place (see the module
    // comment) and this process only ever deletes them, which leaves an
    // existing mapping valid on Unix.
    let mmap = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let len = mmap.len();
    let ptr = NonNull::new(mmap.as_ptr().cast_mut())
        .ok_or_else(|| corrupt(0, "mapping returned a null pointer".into()))?;
    // SAFETY: the pointer is valid for `len` bytes for as long as the mapping
    // lives, and the buffer holds an `Arc` of it.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, mmap.clone()) };

    let trailer_start = len - 10;
    let mut trailer = [0u8; 10];
    trailer.copy_from_slice(&buffer[trailer_start..]);
    let footer_len =
        read_footer_length(trailer).map_err(|e| corrupt(trailer_start as u64, e.to_string()))?;
    let footer_start = trailer_start.checked_sub(footer_len).ok_or_else(|| {
        corrupt(
            trailer_start as u64,
            format!("footer length {footer_len} exceeds the file"),
        )
    })?;
    let footer = root_as_footer(&buffer[footer_start..trailer_start])
        .map_err(|e| corrupt(footer_start as u64, format!("bad footer: {e}")))?;
    // arrow panics on some malformed files (an integer of width 0, a
    // validity buffer shorter than its length — both found by fuzzing):
    // every decode is guarded, so such a file is "corrupt", never a crash
    // at recovery.
    let fb_schema = footer
        .schema()
        .ok_or_else(|| corrupt(footer_start as u64, "footer has no schema".into()))?;
    let file_schema = crate::ipc::guarded("the footer's schema", || Ok(fb_to_schema(fb_schema)))
        .map_err(|e| corrupt(footer_start as u64, e))?;
    let schema = event_schema();
    if file_schema.fields() != schema.fields() {
        return Err(corrupt(
            footer_start as u64,
            "not in the event schema".into(),
        ));
    }
    let decoder = FileDecoder::new(schema, footer.version());
    if footer.dictionaries().is_some_and(|d| !d.is_empty()) {
        return Err(corrupt(
            footer_start as u64,
            "unexpected dictionaries".into(),
        ));
    }
    let mut chunks = Vec::new();
    let mut offset = first;
    for block in footer.recordBatches().into_iter().flatten() {
        let start = u64::try_from(block.offset()).ok();
        let block_len = u64::try_from(block.metaDataLength())
            .ok()
            .zip(u64::try_from(block.bodyLength()).ok())
            .and_then(|(m, b)| m.checked_add(b));
        let (start, block_len) = match (start, block_len) {
            (Some(s), Some(l))
                if l >= 8 && s.checked_add(l).is_some_and(|e| e <= footer_start as u64) =>
            {
                (s as usize, l as usize)
            }
            _ => {
                return Err(corrupt(
                    footer_start as u64,
                    "record batch block out of bounds".into(),
                ));
            }
        };
        let data = buffer.slice_with_length(start, block_len);
        let batch = crate::ipc::guarded("the record batch", || {
            decoder.read_record_batch(block, &data)
        })
        .map_err(|e| corrupt(start as u64, e))?
        .ok_or_else(|| corrupt(start as u64, "empty record batch message".into()))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let rows = batch.num_rows() as u64;
        chunks.push(Chunk {
            first_offset: offset,
            batch,
        });
        offset += rows;
    }
    if offset != end {
        return Err(corrupt(
            0,
            format!(
                "holds {} rows but its name says {}",
                offset - first,
                end - first
            ),
        ));
    }
    let batches: Vec<RecordBatch> = chunks.iter().map(|c| c.batch.clone()).collect();
    let (min_occurred_at_us, max_occurred_at_us) =
        summary::time_range(&batches).unwrap_or((i64::MAX, i64::MIN));
    // Written by `write_segment`; computed for segments written before
    // summaries existed (or whose summary does not add up).
    let stored = footer.custom_metadata().and_then(|kvs| {
        kvs.iter()
            .find(|kv| kv.key() == Some(FOOTER_KEY))
            .and_then(|kv| kv.value())
            .and_then(|v| Summary::decode(v, end - first))
    });
    let summary = stored
        .or_else(|| summary::summarise(&batches))
        .map(Arc::new);
    Ok(Segment {
        first,
        end,
        path: path.to_owned(),
        file_bytes,
        max_occurred_at_us,
        min_occurred_at_us,
        summary,
        chunks,
        mmap,
    })
}
