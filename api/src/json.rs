//! Encoding event batches as JSON objects, straight from the Arrow columns.
//!
//! `data` and `changes` are stored as validated JSON text and are copied in
//! verbatim, not parsed and re-serialised; timestamps are formatted without
//! going through a date library. This keeps the JSON path honest when it is
//! compared with Arrow Flight.

use std::io::Write as _;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use honeycell_storage::col;

/// Appends `"2026-11-26T10:00:00.123456Z"` for microseconds since the epoch.
pub fn write_rfc3339_us(out: &mut Vec<u8>, us: i64) {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let mut y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    if m <= 2 {
        y += 1;
    }
    if !(0..=9999).contains(&y) {
        // Outside RFC 3339's four-digit years: the general formatter.
        let _ = write!(
            out,
            "\"{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z\"",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        return;
    }
    // Digits by hand: `write!` with padding was a visible share of the JSON
    // and GraphQL paths' profiles.
    let mut b = *b"\"0000-00-00T00:00:00.000000Z\"";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(1, 4, y);
    put(6, 2, m);
    put(9, 2, d);
    put(12, 2, sod / 3600);
    put(15, 2, (sod / 60) % 60);
    put(18, 2, sod % 60);
    put(21, 6, micros);
    out.extend_from_slice(&b);
}

/// RFC 3339 text for microseconds since the epoch.
pub fn rfc3339_us(us: i64) -> String {
    let mut v = Vec::with_capacity(32);
    write_rfc3339_us(&mut v, us);
    String::from_utf8_lossy(&v[1..v.len() - 1]).into_owned()
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends every row of `batch` as a JSON object, separated by commas;
/// `first` says whether a comma is needed before the first row.
pub fn write_events(out: &mut Vec<u8>, batch: &RecordBatch, mut first: bool) {
    let s = |c: usize| batch.column(c).as_string::<i32>();
    let (event_id, org_id, event_type) = (s(col::EVENT_ID), s(col::ORG_ID), s(col::EVENT_TYPE));
    let (entity_type, entity_id) = (s(col::ENTITY_TYPE), s(col::ENTITY_ID));
    let (data, changes, user_id, trace_id) = (
        s(col::DATA),
        s(col::CHANGES),
        s(col::USER_ID),
        s(col::TRACE_ID),
    );
    let occurred = batch
        .column(col::OCCURRED_AT)
        .as_primitive::<TimestampMicrosecondType>();
    for i in 0..batch.num_rows() {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(b"{\"event_id\":");
        write_str(out, event_id.value(i));
        out.extend_from_slice(b",\"org_id\":");
        write_str(out, org_id.value(i));
        out.extend_from_slice(b",\"event_type\":\"");
        out.extend_from_slice(event_type.value(i).as_bytes());
        out.extend_from_slice(b"\",\"entity_type\":");
        write_str(out, entity_type.value(i));
        out.extend_from_slice(b",\"entity_id\":");
        write_str(out, entity_id.value(i));
        out.extend_from_slice(b",\"occurred_at\":");
        write_rfc3339_us(out, occurred.value(i));
        for (name, column) in [(&b",\"data\":"[..], data), (b",\"changes\":", changes)] {
            out.extend_from_slice(name);
            if column.is_null(i) {
                out.extend_from_slice(b"null");
            } else {
                // Validated JSON text at ingest: copied verbatim.
                out.extend_from_slice(column.value(i).as_bytes());
            }
        }
        for (name, column) in [
            (&b",\"user_id\":"[..], user_id),
            (b",\"trace_id\":", trace_id),
        ] {
            out.extend_from_slice(name);
            if column.is_null(i) {
                out.extend_from_slice(b"null");
            } else {
                write_str(out, column.value(i));
            }
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_us(1_795_737_600_123_456),
            "2026-11-27T00:00:00.123456Z"
        );
        assert_eq!(
            rfc3339_us(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(rfc3339_us(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            rfc3339_us(253_402_300_799_999_999),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            rfc3339_us(253_402_300_800_000_000),
            "10000-01-01T00:00:00.000000Z"
        );
    }
}
