//! Idempotent ingest: the per-org index of event ids stored recently.
//!
//! Every stored event's `event_id` (client-supplied or a server UUIDv7) is
//! remembered with the time it was ingested, for `storage.dedup_window`
//! (default 24 h; 0 turns deduplication off). [`crate::OrgLog::append`]
//! drops the rows whose id is in the index, so a producer that retries after
//! a timeout stores its events once. Ids enter the index when the append is
//! issued — a retry racing its original is caught — and leave it again if
//! that append fails, so a failed write is not remembered as stored.
//!
//! Memory is bounded by `storage.dedup_max_ids` per org: over it, the oldest
//! ids are forgotten first (counted in [`crate::Store::dedup_evicted`]), so
//! under heavy ingest the effective window shrinks to the last
//! `dedup_max_ids` events. Both structures hold 24 bytes per id plus the
//! hash table's overhead.
//!
//! The index lives on the org's owner cell (no locks) and is rebuilt when
//! the org is opened (`io.rs`): from the WAL-recovered rows (taken as
//! ingested "now", which only widens the window) and from the segments whose
//! file was modified within the window (a segment's mtime is when it was
//! sealed or compacted, never earlier than its rows' ingest).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;

use crate::event::col;

/// An event id as stored in the index: the UUID's 128 bits as two halves
/// (8-byte aligned, so an entry of the expiry queue is 24 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Id(u64, u64);

impl std::hash::Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
        state.write_u64(self.1);
    }
}

pub(crate) fn id_of(uuid: uuid::Uuid) -> Id {
    let v = uuid.as_u128();
    Id((v >> 64) as u64, v as u64)
}

/// The ids of a stored batch's rows, in row order. A stored id is always a
/// UUID (`build_batch`/`normalize_batch` wrote it); one that is not (only
/// possible in a file this server did not write) gets `None` and is never
/// deduplicated.
pub(crate) fn batch_ids(batch: &RecordBatch) -> Vec<Option<Id>> {
    batch
        .column(col::EVENT_ID)
        .as_string_opt::<i32>()
        .map(|ids| {
            ids.iter()
                .map(|s| s.and_then(|s| uuid::Uuid::try_parse(s).ok()).map(id_of))
                .collect()
        })
        .unwrap_or_else(|| vec![None; batch.num_rows()])
}

/// A keyed folded multiply of the id's halves (as `foldhash` does): cheap,
/// and keyed per index so that chosen ids do not collide on purpose.
#[derive(Clone, Copy)]
pub(crate) struct IdHashBuilder {
    k0: u64,
    k1: u64,
}

impl IdHashBuilder {
    fn new() -> Self {
        let random = std::collections::hash_map::RandomState::new();
        Self {
            k0: random.hash_one(0u8),
            k1: random.hash_one(1u8) | 1,
        }
    }
}

pub(crate) struct IdHasher {
    keys: IdHashBuilder,
    state: u64,
}

impl BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            keys: *self,
            state: self.k0,
        }
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        let product = u128::from(self.state ^ word) * u128::from(self.keys.k1);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// One org's recently stored ids. Times are microseconds since the epoch.
pub(crate) struct DedupIndex {
    window_us: i64,
    max_ids: usize,
    /// In insertion order (so oldest first), for expiry and eviction.
    order: VecDeque<(i64, Id)>,
    ids: HashSet<Id, IdHashBuilder>,
}

impl DedupIndex {
    /// `window_us == 0` disables the index: nothing is remembered.
    pub(crate) fn new(window_us: i64, max_ids: usize) -> Self {
        Self {
            window_us,
            max_ids,
            order: VecDeque::new(),
            ids: HashSet::with_hasher(IdHashBuilder::new()),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.window_us > 0 && self.max_ids > 0
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Forgets the ids ingested before `now_us - window`.
    pub(crate) fn expire(&mut self, now_us: i64) {
        let cutoff = now_us.saturating_sub(self.window_us);
        while let Some(&(at, id)) = self.order.front() {
            if at >= cutoff {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&id);
        }
    }

    /// Remembers the ids of a batch about to be appended: `keep[row]` is
    /// set for each row whose id was not seen within the window (those are
    /// remembered from now on), cleared for a duplicate. Returns the number
    /// of duplicates and of ids evicted to stay within the cap.
    pub(crate) fn admit(
        &mut self,
        ids: &[Option<Id>],
        now_us: i64,
        keep: &mut Vec<bool>,
    ) -> (usize, u64) {
        keep.clear();
        if !self.enabled() {
            keep.resize(ids.len(), true);
            return (0, 0);
        }
        self.expire(now_us);
        let mut duplicates = 0;
        for id in ids {
            let new = match id {
                Some(id) if self.ids.insert(*id) => {
                    self.order.push_back((now_us, *id));
                    true
                }
                Some(_) => false,
                None => true,
            };
            duplicates += usize::from(!new);
            keep.push(new);
        }
        (duplicates, self.evict_over_cap())
    }

    /// Forgets ids remembered by [`DedupIndex::admit`] for an append that
    /// then failed.
    pub(crate) fn forget(&mut self, ids: impl IntoIterator<Item = Id>) {
        let mut removed = false;
        for id in ids {
            removed |= self.ids.remove(&id);
        }
        if removed {
            let ids = &self.ids;
            self.order.retain(|(_, id)| ids.contains(id));
        }
    }

    /// Adds ids found at recovery, oldest first, ingested at `at_us`.
    pub(crate) fn restore(&mut self, at_us: i64, ids: impl IntoIterator<Item = Id>) -> u64 {
        if !self.enabled() {
            return 0;
        }
        for id in ids {
            if self.ids.insert(id) {
                self.order.push_back((at_us, id));
            }
        }
        self.evict_over_cap()
    }

    fn evict_over_cap(&mut self) -> u64 {
        let mut evicted = 0;
        while self.ids.len() > self.max_ids {
            let Some((_, id)) = self.order.pop_front() else {
                break;
            };
            self.ids.remove(&id);
            evicted += 1;
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Option<Id> {
        Some(Id(n, !n))
    }

    fn admit(index: &mut DedupIndex, ids: &[Option<Id>], now: i64) -> (Vec<bool>, usize) {
        let mut keep = Vec::new();
        let (dups, _) = index.admit(ids, now, &mut keep);
        (keep, dups)
    }

    #[test]
    fn a_repeated_id_is_a_duplicate_and_a_missing_one_never_is() {
        let mut index = DedupIndex::new(1_000, 100);
        assert_eq!(
            admit(&mut index, &[id(1), id(2), None], 0),
            (vec![true, true, true], 0)
        );
        assert_eq!(
            admit(&mut index, &[id(2), id(3), None, id(1)], 10),
            (vec![false, true, true, false], 2)
        );
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn ids_expire_after_the_window() {
        let mut index = DedupIndex::new(1_000, 100);
        admit(&mut index, &[id(1)], 0);
        admit(&mut index, &[id(2)], 500);
        assert_eq!(
            admit(&mut index, &[id(1), id(2)], 1_000).1,
            2,
            "still within"
        );
        assert_eq!(
            admit(&mut index, &[id(1), id(2)], 1_001),
            (vec![true, false], 1)
        );
    }

    #[test]
    fn the_cap_evicts_the_oldest_first() {
        let mut index = DedupIndex::new(1_000_000, 2);
        let mut keep = Vec::new();
        assert_eq!(index.admit(&[id(1), id(2), id(3)], 0, &mut keep), (0, 1));
        assert_eq!(index.len(), 2);
        assert_eq!(admit(&mut index, &[id(1)], 1).1, 0, "1 was evicted");
        assert_eq!(admit(&mut index, &[id(3)], 2).1, 1, "3 is kept");
    }

    #[test]
    fn a_failed_append_is_forgotten() {
        let mut index = DedupIndex::new(1_000, 100);
        admit(&mut index, &[id(1)], 0);
        admit(&mut index, &[id(2), id(3)], 1);
        index.forget([Id(2, !2), Id(3, !3)]);
        assert_eq!(index.len(), 1);
        assert_eq!(
            admit(&mut index, &[id(2), id(1)], 2),
            (vec![true, false], 1)
        );
        // The queue lost the forgotten entries too: 2 expires on its own time.
        index.expire(1_002);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_zero_window_disables_it() {
        let mut index = DedupIndex::new(0, 100);
        assert_eq!(admit(&mut index, &[id(1)], 0).1, 0);
        assert_eq!(admit(&mut index, &[id(1)], 0), (vec![true], 0));
        assert_eq!(index.restore(0, [Id(1, 1)]), 0);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn restored_ids_are_duplicates() {
        let mut index = DedupIndex::new(1_000, 2);
        assert_eq!(index.restore(0, [Id(1, !1), Id(2, !2), Id(3, !3)]), 1);
        assert_eq!(
            admit(&mut index, &[id(1), id(2), id(3)], 5),
            (vec![true, false, false], 2)
        );
    }
}
