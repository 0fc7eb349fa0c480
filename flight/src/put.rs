//! Decoding a DoPut stream without trusting it: every message goes through
//! storage's checked IPC decoder (`honeycell_storage::IpcDecoder`, which
//! says why a message is refused), so a malformed one is `INVALID_ARGUMENT`
//! naming what is wrong, never a panic.

use arrow::array::RecordBatch;
use arrow_flight::FlightData;
use honeycell_storage::IpcDecoder;

use crate::error::{Error, Result};

/// Decodes one DoPut stream's messages, in order.
#[derive(Debug, Default)]
pub struct PutDecoder {
    inner: IpcDecoder,
}

impl PutDecoder {
    /// The batch a message carries (`None` for the schema and for messages
    /// without a header), or why it is refused.
    pub fn decode(&mut self, data: &FlightData) -> Result<Option<RecordBatch>> {
        self.inner
            .decode(&data.data_header, &data.data_body)
            .map_err(|reason| Error::BadIpc { reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
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
