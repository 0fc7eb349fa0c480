//! Write-ahead log framing.
//!
//! A frame is `magic (4) | payload length u32 LE (4) | crc32c u32 LE (4) |
//! first_offset u64 LE (8) | payload`, where the payload is one batch as an
//! Arrow IPC *stream* and the checksum covers `first_offset` and the payload.
//! Every frame is self-describing so that a reader needs no other state, and
//! the checksum makes a torn tail (kill -9 mid-write) or a flipped bit
//! distinguishable from data.

use std::io::Cursor;

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;

use crate::error::{Error, Result};
use crate::event::event_schema;

pub(crate) const MAGIC: [u8; 4] = *b"HCW1";
pub(crate) const HEADER_LEN: usize = 20;

/// Encode one batch as a WAL frame. Runs on the caller's thread so that an
/// encoding failure is reported before an offset is handed out.
pub(crate) fn encode_frame(first_offset: u64, batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER_LEN];
    {
        let mut writer = StreamWriter::try_new(&mut buf, &event_schema())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    let payload_len = u32::try_from(buf.len() - HEADER_LEN).map_err(|_| {
        Error::schema(
            "<batch>",
            None,
            "batch is larger than 4 GiB once encoded; split it",
        )
    })?;
    let crc = checksum(first_offset, &buf[HEADER_LEN..]);
    buf[0..4].copy_from_slice(&MAGIC);
    buf[4..8].copy_from_slice(&payload_len.to_le_bytes());
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf[12..20].copy_from_slice(&first_offset.to_le_bytes());
    Ok(buf)
}

fn checksum(first_offset: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&first_offset.to_le_bytes()), payload)
}

/// A frame read back from a WAL file.
#[derive(Debug)]
pub(crate) struct Frame {
    pub first_offset: u64,
    pub batch: RecordBatch,
    /// Byte position of the frame in its file.
    pub pos: u64,
}

/// Where and why a scan stopped before the end of the bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadFrame {
    pub pos: u64,
    pub reason: String,
}

/// Decode frames from the start of `bytes` up to the first torn or corrupt
/// one. Everything before `BadFrame::pos` is intact.
pub(crate) fn scan(bytes: &[u8]) -> (Vec<Frame>, Option<BadFrame>) {
    let mut frames = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        match decode_at(&bytes[pos..]) {
            Ok((first_offset, batch, len)) => {
                frames.push(Frame {
                    first_offset,
                    batch,
                    pos: pos as u64,
                });
                pos += len;
            }
            Err(reason) => {
                return (
                    frames,
                    Some(BadFrame {
                        pos: pos as u64,
                        reason,
                    }),
                );
            }
        }
    }
    (frames, None)
}

fn decode_at(buf: &[u8]) -> std::result::Result<(u64, RecordBatch, usize), String> {
    let header = buf
        .get(..HEADER_LEN)
        .ok_or_else(|| format!("torn header ({} of {HEADER_LEN} bytes)", buf.len()))?;
    let field = |range: std::ops::Range<usize>| -> [u8; 4] {
        let mut out = [0u8; 4];
        out.copy_from_slice(&header[range]);
        out
    };
    if field(0..4) != MAGIC {
        return Err("bad frame magic".into());
    }
    let payload_len = u32::from_le_bytes(field(4..8)) as usize;
    let crc = u32::from_le_bytes(field(8..12));
    let mut offset_bytes = [0u8; 8];
    offset_bytes.copy_from_slice(&header[12..20]);
    let first_offset = u64::from_le_bytes(offset_bytes);
    let payload = buf
        .get(HEADER_LEN..HEADER_LEN + payload_len)
        .ok_or_else(|| {
            format!(
                "torn payload ({} of {payload_len} bytes)",
                buf.len() - HEADER_LEN
            )
        })?;
    if checksum(first_offset, payload) != crc {
        return Err("checksum mismatch".into());
    }
    // The checksum matched, so these are the bytes this server wrote; a
    // payload arrow cannot read (a bug, or an edit with a forged checksum)
    // is still an undecodable frame, never a panic at recovery.
    let batch = std::panic::catch_unwind(|| decode_payload(payload))
        .unwrap_or_else(|_| Err("undecodable payload: its lengths do not match its data".into()))?;
    Ok((first_offset, batch, HEADER_LEN + payload_len))
}

fn decode_payload(payload: &[u8]) -> std::result::Result<RecordBatch, String> {
    check_stream_lengths(payload)?;
    let reader = StreamReader::try_new(Cursor::new(payload), None)
        .map_err(|e| format!("undecodable payload: {e}"))?;
    if reader.schema().fields() != event_schema().fields() {
        return Err("payload is not in the event schema".into());
    }
    let mut batches = Vec::with_capacity(1);
    for batch in reader {
        batches.push(batch.map_err(|e| format!("undecodable payload: {e}"))?);
    }
    match batches.len() {
        1 => batches.pop().ok_or_else(|| "no batch".into()),
        _ => arrow_select::concat::concat_batches(&event_schema(), &batches)
            .map_err(|e| format!("undecodable payload: {e}")),
    }
}

/// Walks the IPC stream's framing (continuation marker, metadata length,
/// `Message` flatbuffer, body) and checks that every length fits in the
/// payload. arrow's reader allocates a message's claimed body length before
/// reading it, and a failed allocation aborts the process (no
/// `catch_unwind` helps): a frame claiming 2^40 bytes would stop recovery
/// for good (found by fuzzing `wal_frames`).
fn check_stream_lengths(payload: &[u8]) -> std::result::Result<(), String> {
    let mut rest = payload;
    let next_i32 = |rest: &mut &[u8]| -> Option<i32> {
        let (head, tail) = rest.split_first_chunk::<4>()?;
        *rest = tail;
        Some(i32::from_le_bytes(*head))
    };
    loop {
        let Some(mut len) = next_i32(&mut rest) else {
            // The stream may end without its end-of-stream marker.
            return Ok(());
        };
        if len == -1 {
            len = next_i32(&mut rest).ok_or("a message's length is cut off")?;
        }
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or_else(|| format!("a message's metadata claims {len} bytes of {}", rest.len()))?;
        let (meta, tail) = rest.split_at(len);
        let message = arrow_ipc::root_as_message(meta)
            .map_err(|e| format!("undecodable message metadata: {e}"))?;
        let body = usize::try_from(message.bodyLength())
            .ok()
            .filter(|&b| b <= tail.len())
            .ok_or_else(|| {
                format!(
                    "a message's body claims {} bytes of {}",
                    message.bodyLength(),
                    tail.len()
                )
            })?;
        rest = &tail[body..];
    }
}

/// Entry points for the fuzz targets (`fuzz/`), which feed recovery bytes
/// that no server wrote.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    /// A WAL frame around `payload`, with a valid checksum (so that the
    /// fuzzer reaches the payload's decoding).
    pub fn frame(first_offset: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(super::HEADER_LEN + payload.len());
        out.extend_from_slice(&super::MAGIC);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&super::checksum(first_offset, payload).to_le_bytes());
        out.extend_from_slice(&first_offset.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Scans WAL bytes as recovery does; the number of intact frames.
    pub fn scan(bytes: &[u8]) -> usize {
        super::scan(bytes).0.len()
    }
}
