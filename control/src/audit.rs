//! The audit log's per-org hash chain.
//!
//! Entry *n*'s hash is SHA-256 over a domain tag, entry *n−1*'s hash, *n*
//! itself and every field of the entry, each length-prefixed so that no two
//! different entries encode alike. The first entry of an org chains from 32
//! zero bytes. Changing, removing or reordering any stored entry breaks every
//! later hash, which [`verify_chain`] reports with the first bad sequence
//! number (`honeycell audit verify`).

use sha2::{Digest, Sha256};

use crate::model::{AuditDraft, AuditEntry};

/// The hash the first entry of every org chains from.
pub const GENESIS: [u8; 32] = [0; 32];

const DOMAIN: &[u8] = b"honeycell-audit-v1";

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn opt_field(h: &mut Sha256, v: Option<&str>) {
    match v {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            field(h, s.as_bytes());
        }
    }
}

/// The hash of entry `seq` with contents `d`, following `prev`.
pub fn entry_hash(prev: &[u8; 32], seq: u64, d: &AuditDraft) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    h.update(seq.to_be_bytes());
    field(&mut h, d.org.as_str().as_bytes());
    h.update(d.at_us.to_be_bytes());
    field(&mut h, d.actor.as_bytes());
    field(&mut h, d.action.as_bytes());
    field(&mut h, d.resource.as_bytes());
    field(&mut h, d.result.as_bytes());
    opt_field(&mut h, d.trace_id.as_deref());
    opt_field(&mut h, d.detail.as_deref());
    h.finalize().into()
}

/// Chains `drafts` after the head `(seq, hash)` (`(0, GENESIS)` for an empty
/// log); returns the entries and the new head.
pub fn chain(
    head: (u64, [u8; 32]),
    drafts: impl IntoIterator<Item = AuditDraft>,
) -> (Vec<AuditEntry>, (u64, [u8; 32])) {
    let (mut seq, mut prev) = head;
    let mut out = Vec::new();
    for draft in drafts {
        seq += 1;
        let hash = entry_hash(&prev, seq, &draft);
        out.push(AuditEntry {
            seq,
            draft,
            prev_hash: prev,
            hash,
        });
        prev = hash;
    }
    (out, (seq, prev))
}

/// Where a chain is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: u64,
    pub reason: String,
}

/// Incremental verifier over an org's entries in ascending `seq` order.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev: [u8; 32],
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev: GENESIS,
        }
    }
}

impl ChainVerifier {
    /// Checks the next entry; the first failure names the entry.
    pub fn push(&mut self, e: &AuditEntry) -> Result<(), ChainBreak> {
        let broken = |reason: String| ChainBreak { seq: e.seq, reason };
        if e.seq != self.expected_seq {
            return Err(broken(format!(
                "expected entry {} next, found {} (an entry was removed or reordered)",
                self.expected_seq, e.seq
            )));
        }
        if e.prev_hash != self.prev {
            return Err(broken(
                "its previous-hash does not match the entry before it".to_owned(),
            ));
        }
        if entry_hash(&self.prev, e.seq, &e.draft) != e.hash {
            return Err(broken(
                "its contents do not match its hash (the entry was altered)".to_owned(),
            ));
        }
        self.prev = e.hash;
        self.expected_seq += 1;
        Ok(())
    }

    /// Entries verified so far.
    pub fn verified(&self) -> u64 {
        self.expected_seq - 1
    }
}

/// Verifies a whole chain; returns the number of entries.
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
) -> Result<u64, ChainBreak> {
    let mut v = ChainVerifier::default();
    for e in entries {
        v.push(e)?;
    }
    Ok(v.verified())
}

#[cfg(test)]
mod tests {
    use honeycell_types::OrgId;

    use super::*;

    fn draft(i: i64) -> AuditDraft {
        AuditDraft {
            org: OrgId::new("acme").unwrap(),
            at_us: i,
            actor: "alice".into(),
            action: "apikey.create".into(),
            resource: format!("apikey/{i}"),
            result: "ok".into(),
            trace_id: None,
            detail: Some("x".into()),
        }
    }

    #[test]
    fn chains_verify_and_tampering_is_found() {
        let (entries, head) = chain((0, GENESIS), (1..=5).map(draft));
        assert_eq!(head.0, 5);
        assert_eq!(verify_chain(&entries), Ok(5));

        let mut altered = entries.clone();
        altered[2].draft.result = "denied".into();
        assert_eq!(verify_chain(&altered).unwrap_err().seq, 3);

        let mut removed = entries.clone();
        removed.remove(1);
        assert_eq!(verify_chain(&removed).unwrap_err().seq, 3);

        // Re-hashing an altered entry still breaks the next link.
        let mut rehashed = entries.clone();
        rehashed[1].draft.actor = "mallory".into();
        rehashed[1].hash = entry_hash(&rehashed[1].prev_hash, 2, &rehashed[1].draft);
        assert_eq!(verify_chain(&rehashed).unwrap_err().seq, 3);
    }

    #[test]
    fn optional_fields_are_unambiguous() {
        let a = AuditDraft {
            trace_id: Some(String::new()),
            detail: None,
            ..draft(1)
        };
        let b = AuditDraft {
            trace_id: None,
            detail: Some(String::new()),
            ..draft(1)
        };
        assert_ne!(entry_hash(&GENESIS, 1, &a), entry_hash(&GENESIS, 1, &b));
    }
}
