//! The trace id of the request being served, for audit entries.
//!
//! Each protocol scopes a [`TRACE_ID`] around a request: the trace id of
//! its W3C `traceparent` header when it carries a valid one (so entries
//! line up with the caller's distributed trace), else a new random one.
//! [`crate::AuditSink::record`] stamps it on every entry recorded inside
//! that scope, so no handler has to pass it along; the HTTP answer carries
//! it back as `x-trace-id`.

tokio::task_local! {
    /// The current request's trace id (32 lowercase hex digits).
    pub static TRACE_ID: String;
}

/// The trace id of a `traceparent` header
/// (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), if valid.
pub fn from_traceparent(header: &str) -> Option<String> {
    let mut parts = header.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    // Version ff is invalid; all-zero ids are invalid (W3C Trace Context).
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && (version != "00" || parts.next().is_none());
    valid.then(|| trace.to_owned())
}

/// A new random trace id.
pub fn new_trace_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// The trace id for a request with this `traceparent` header (or none).
pub fn trace_id_for(traceparent: Option<&str>) -> String {
    traceparent
        .and_then(from_traceparent)
        .unwrap_or_else(new_trace_id)
}

/// The trace id of the request being served, if inside a scope.
pub fn current() -> Option<String> {
    TRACE_ID
        .try_with(Clone::clone)
        .ok()
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            from_traceparent(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
            Some(id)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(from_traceparent(bad), None, "{bad}");
        }
        assert_eq!(new_trace_id().len(), 32);
        assert_ne!(new_trace_id(), new_trace_id());
    }
}
