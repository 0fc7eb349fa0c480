//! Decoding a DoPut stream without trusting it.
//!
//! arrow-ipc trusts the lengths in a message header: a buffer that claims
//! more bytes than the body holds panics inside arrow-buffer, a compressed
//! buffer may claim any uncompressed size, and a negative length becomes a
//! huge one. [`PutDecoder`] checks every message against the bytes that
//! actually arrived before arrow reads it — the body length, each buffer's
//! span, each node's counts, the batch's row count, no compression, no
//! dictionaries — so a malformed message is `INVALID_ARGUMENT` naming what
//! is wrong. Decoding also runs under `catch_unwind`, so a case these checks
//! miss costs one refused stream, not a cell.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::FlightData;
use arrow_ipc::MessageHeader;

use crate::error::{Error, Result};

/// Most rows one DoPut message may hold (the gRPC message limit bounds the
/// bytes; this bounds what zero-byte columns could claim).
pub const MAX_ROWS_PER_MESSAGE: i64 = 1 << 24;
/// Most columns a DoPut schema may have (the event schema has ten).
const MAX_FIELDS: usize = 64;

/// Decodes one DoPut stream's messages, in order.
#[derive(Debug, Default)]
pub struct PutDecoder {
    schema: Option<SchemaRef>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadIpc {
        reason: reason.into(),
    }
}

impl PutDecoder {
    /// The batch a message carries (`None` for the schema and for messages
    /// without a header), or why it is refused.
    pub fn decode(&mut self, data: &FlightData) -> Result<Option<RecordBatch>> {
        if data.data_header.is_empty() {
            if data.data_body.is_empty() {
                return Ok(None);
            }
            return Err(bad("a message has a body but no IPC header"));
        }
        let message = arrow_ipc::root_as_message(&data.data_header).map_err(|e| {
            bad(format!(
                "the IPC message header is not a valid flatbuffer ({e})"
            ))
        })?;
        let body = data.data_body.len() as u64;
        let declared = message.bodyLength();
        if u64::try_from(declared).ok() != Some(body) {
            return Err(bad(format!(
                "the header's bodyLength is {declared} bytes but the message carries {body}"
            )));
        }
        match message.header_type() {
            MessageHeader::Schema => {
                if self.schema.is_some() {
                    return Err(bad("a second schema message; send one schema per stream"));
                }
                let schema = guarded("the schema", || Schema::try_from(data))?;
                if schema.fields().len() > MAX_FIELDS {
                    return Err(bad(format!(
                        "the schema has {} columns; events have at most {MAX_FIELDS}",
                        schema.fields().len()
                    )));
                }
                self.schema = Some(Arc::new(schema));
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let schema = self
                    .schema
                    .clone()
                    .ok_or_else(|| bad("a record batch came before the schema"))?;
                let batch = message
                    .header_as_record_batch()
                    .ok_or_else(|| bad("the record batch header is missing"))?;
                check_batch(&batch, body)?;
                let decoded = guarded("a record batch", || {
                    arrow_flight::utils::flight_data_to_arrow_batch(data, schema, &HashMap::new())
                })?;
                Ok(Some(decoded))
            }
            MessageHeader::DictionaryBatch => Err(bad(
                "dictionary-encoded columns are not accepted; send plain string columns",
            )),
            other => Err(bad(format!(
                "unexpected IPC message type {other:?}; DoPut takes a schema, then record batches"
            ))),
        }
    }
}

/// The header of a record batch against the `body` bytes that arrived.
fn check_batch(batch: &arrow_ipc::RecordBatch<'_>, body: u64) -> Result<()> {
    if batch.compression().is_some() {
        return Err(bad(
            "compressed IPC bodies are not accepted; send uncompressed batches (gRPC compresses the stream if asked)",
        ));
    }
    let rows = batch.length();
    if !(0..=MAX_ROWS_PER_MESSAGE).contains(&rows) {
        return Err(bad(format!(
            "the batch claims {rows} rows; a message holds 0 to {MAX_ROWS_PER_MESSAGE}"
        )));
    }
    for (i, node) in batch.nodes().into_iter().flatten().enumerate() {
        let (len, nulls) = (node.length(), node.null_count());
        if !(0..=i64::from(i32::MAX)).contains(&len) || nulls < 0 || nulls > len {
            return Err(bad(format!(
                "field node {i} claims {len} values with {nulls} nulls"
            )));
        }
    }
    for (i, buffer) in batch.buffers().into_iter().flatten().enumerate() {
        let (offset, length) = (buffer.offset(), buffer.length());
        let end = u64::try_from(offset)
            .ok()
            .zip(u64::try_from(length).ok())
            .and_then(|(o, l)| o.checked_add(l));
        if end.is_none_or(|end| end > body) {
            return Err(bad(format!(
                "buffer {i} claims bytes {offset}..+{length} of a {body}-byte body"
            )));
        }
    }
    Ok(())
}

/// Runs an arrow decode, turning a panic into a refusal.
fn guarded<T>(
    what: &str,
    decode: impl FnOnce() -> std::result::Result<T, arrow::error::ArrowError>,
) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(decode)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(bad(format!("{what} does not decode: {e}"))),
        Err(_) => Err(bad(format!(
            "{what} is malformed (its lengths do not match its data)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::{DataType, Field};
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use futures::TryStreamExt as _;

    fn messages() -> Vec<FlightData> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "entity_id",
            DataType::Utf8,
            false,
        )]));
        let col: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        let batch = RecordBatch::try_new(schema, vec![col]).expect("batch");
        let stream = FlightDataEncoderBuilder::new().build(futures::stream::iter([Ok(batch)]));
        futures::executor::block_on(stream.try_collect()).expect("encode")
    }

    /// Rewrites the header of message `i` with `edit` applied to its bytes.
    fn decode_all(msgs: &[FlightData]) -> Result<Vec<RecordBatch>> {
        let mut d = PutDecoder::default();
        let mut out = Vec::new();
        for m in msgs {
            out.extend(d.decode(m)?);
        }
        Ok(out)
    }

    #[test]
    fn a_well_formed_stream_decodes() {
        let batches = decode_all(&messages()).expect("decodes");
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 3);
    }

    #[test]
    fn a_body_shorter_than_declared_is_refused() {
        let mut msgs = messages();
        let last = msgs.last_mut().expect("a batch message");
        last.data_body = last.data_body.slice(0..last.data_body.len() / 2);
        let e = decode_all(&msgs).expect_err("truncated body");
        assert!(e.to_string().contains("bodyLength"), "{e}");
    }

    #[test]
    fn a_batch_before_its_schema_is_refused() {
        let msgs = messages();
        let e = decode_all(&msgs[1..]).expect_err("no schema");
        assert!(e.to_string().contains("before the schema"), "{e}");
    }

    /// Replaces, in a record batch header, the length of its last buffer.
    fn forge_buffer_length(msg: &mut FlightData, length: i64) {
        let header = msg.data_header.to_vec();
        let message = arrow_ipc::root_as_message(&header).expect("message");
        let batch = message.header_as_record_batch().expect("batch");
        let buffers = batch.buffers().expect("buffers");
        let last = buffers.get(buffers.len() - 1);
        let mut pattern = last.offset().to_le_bytes().to_vec();
        pattern.extend_from_slice(&last.length().to_le_bytes());
        let at = header
            .windows(16)
            .position(|w| w == pattern.as_slice())
            .expect("the buffer's bytes in the header");
        let mut forged = header.clone();
        forged[at + 8..at + 16].copy_from_slice(&length.to_le_bytes());
        msg.data_header = forged.into();
    }

    #[test]
    fn buffers_longer_than_the_body_are_refused_not_a_panic() {
        for length in [1 << 30, i64::MAX, -1] {
            let mut msgs = messages();
            let last = msgs.last_mut().expect("a batch message");
            forge_buffer_length(last, length);
            let e = decode_all(&msgs).expect_err("forged buffer");
            assert!(e.to_string().contains("buffer"), "{length}: {e}");
        }
    }

    #[test]
    fn garbage_headers_are_refused() {
        let mut msgs = messages();
        msgs[1].data_header = vec![0xff; 64].into();
        assert!(decode_all(&msgs).is_err());
    }
}
