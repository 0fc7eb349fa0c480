//! Decoding Arrow IPC messages that came from outside, without trusting
//! them.
//!
//! arrow-ipc trusts the lengths in a message header: a buffer that claims
//! more bytes than the body holds panics inside arrow-buffer, a compressed
//! buffer may claim any uncompressed size, and a negative length becomes a
//! huge one. [`IpcDecoder`] checks every message against the bytes that
//! actually arrived before arrow reads it — the body length, each buffer's
//! span, each node's counts, the batch's row count, no compression, no
//! dictionaries — and says what is wrong. Decoding also runs under
//! `catch_unwind`, so a case these checks miss costs one refused message,
//! not a thread. Flight's DoPut decodes through this (its `put.rs`), and
//! the fuzz target `ipc_stream` drives it with arbitrary bytes.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::MessageHeader;
use arrow_schema::SchemaRef;

/// Most rows one message may hold (the transport bounds the bytes; this
/// bounds what zero-byte columns could claim).
pub const MAX_ROWS_PER_MESSAGE: i64 = 1 << 24;
/// Most columns a schema may have (the event schema has ten).
const MAX_FIELDS: usize = 64;

/// Decodes one stream's messages (a schema, then record batches), in order.
#[derive(Debug, Default)]
pub struct IpcDecoder {
    schema: Option<SchemaRef>,
}

impl IpcDecoder {
    /// The batch a message (`header`: the flatbuffer `Message`, `body`: the
    /// bytes after it) carries — `None` for the schema and for an empty
    /// message — or why it is refused.
    pub fn decode(&mut self, header: &[u8], body: &[u8]) -> Result<Option<RecordBatch>, String> {
        if header.is_empty() {
            if body.is_empty() {
                return Ok(None);
            }
            return Err("a message has a body but no IPC header".into());
        }
        let message = arrow_ipc::root_as_message(header)
            .map_err(|e| format!("the IPC message header is not a valid flatbuffer ({e})"))?;
        let body_len = body.len() as u64;
        let declared = message.bodyLength();
        if u64::try_from(declared).ok() != Some(body_len) {
            return Err(format!(
                "the header's bodyLength is {declared} bytes but the message carries {body_len}"
            ));
        }
        match message.header_type() {
            MessageHeader::Schema => {
                if self.schema.is_some() {
                    return Err("a second schema message; send one schema per stream".into());
                }
                let fb = message
                    .header_as_schema()
                    .ok_or("the schema header is missing")?;
                let schema = guarded("the schema", || Ok(arrow_ipc::convert::fb_to_schema(fb)))?;
                if schema.fields().len() > MAX_FIELDS {
                    return Err(format!(
                        "the schema has {} columns; events have at most {MAX_FIELDS}",
                        schema.fields().len()
                    ));
                }
                self.schema = Some(Arc::new(schema));
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let schema = self
                    .schema
                    .clone()
                    .ok_or("a record batch came before the schema")?;
                let batch = message
                    .header_as_record_batch()
                    .ok_or("the record batch header is missing")?;
                check_batch(&batch, body_len)?;
                let version = message.version();
                let decoded = guarded("a record batch", || {
                    arrow_ipc::reader::read_record_batch(
                        &Buffer::from(body),
                        batch,
                        schema,
                        &HashMap::new(),
                        None,
                        &version,
                    )
                })?;
                Ok(Some(decoded))
            }
            MessageHeader::DictionaryBatch => {
                Err("dictionary-encoded columns are not accepted; send plain string columns".into())
            }
            other => Err(format!(
                "unexpected IPC message type {other:?}; send a schema, then record batches"
            )),
        }
    }
}

/// The header of a record batch against the `body` bytes that arrived.
fn check_batch(batch: &arrow_ipc::RecordBatch<'_>, body: u64) -> Result<(), String> {
    if batch.compression().is_some() {
        return Err(
            "compressed IPC bodies are not accepted; send uncompressed batches (gRPC compresses the stream if asked)"
                .into(),
        );
    }
    let rows = batch.length();
    if !(0..=MAX_ROWS_PER_MESSAGE).contains(&rows) {
        return Err(format!(
            "the batch claims {rows} rows; a message holds 0 to {MAX_ROWS_PER_MESSAGE}"
        ));
    }
    for (i, node) in batch.nodes().into_iter().flatten().enumerate() {
        let (len, nulls) = (node.length(), node.null_count());
        if !(0..=i64::from(i32::MAX)).contains(&len) || nulls < 0 || nulls > len {
            return Err(format!(
                "field node {i} claims {len} values with {nulls} nulls"
            ));
        }
    }
    for (i, buffer) in batch.buffers().into_iter().flatten().enumerate() {
        let (offset, length) = (buffer.offset(), buffer.length());
        let end = u64::try_from(offset)
            .ok()
            .zip(u64::try_from(length).ok())
            .and_then(|(o, l)| o.checked_add(l));
        if end.is_none_or(|end| end > body) {
            return Err(format!(
                "buffer {i} claims bytes {offset}..+{length} of a {body}-byte body"
            ));
        }
    }
    Ok(())
}

thread_local! {
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside a guarded decode of bytes from outside:
/// a panic hook asks it to tell such a panic (caught, answered as a
/// refusal, possibly sent on purpose) from a bug.
pub fn decoding_untrusted() -> bool {
    DECODING.with(std::cell::Cell::get)
}

/// Runs an arrow decode, turning a panic into a refusal (also used for
/// segment files at recovery).
pub(crate) fn guarded<T>(
    what: &str,
    decode: impl FnOnce() -> Result<T, arrow_schema::ArrowError>,
) -> Result<T, String> {
    let outer = DECODING.with(|d| d.replace(true));
    let result = catch_unwind(AssertUnwindSafe(decode));
    DECODING.with(|d| d.set(outer));
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what} does not decode: {e}")),
        Err(_) => Err(format!(
            "{what} is malformed (its lengths do not match its data)"
        )),
    }
}
