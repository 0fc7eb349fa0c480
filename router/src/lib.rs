//! Placement of tenants on cells: a pure function `org_id → cell` plus an
//! override table for pinned or moved tenants.
//!
//! Placement uses jump consistent hashing (Lamping & Veach, 2014) over a
//! stable 64-bit hash of the org id. The hash is written out here rather than
//! taken from `std` because `DefaultHasher` is not guaranteed stable across
//! Rust releases, and placement must survive restarts and upgrades: the same
//! org with the same cell count lands on the same cell, and growing from N to
//! N+1 cells moves only about 1/(N+1) of the orgs.
//!
//! The router deliberately holds no business logic (AWS's cell-based
//! architecture guidance lists complex routing as the first anti-pattern): it
//! knows nothing of storage, protocols or limits. Read `cell` next for what
//! the owning cell does with a request.

use std::collections::HashMap;

use honeycell_types::{CellId, OrgId};

/// Errors building a router.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("cells: the cell count must be at least 1")]
    NoCells,
    #[error(
        "router.overrides: org {org} is pinned to cell {cell}, but only {cells} cells run (0..{cells})"
    )]
    OverrideOutOfRange { org: String, cell: u32, cells: u32 },
    #[error("router.overrides: {0}")]
    BadOrg(#[from] honeycell_types::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The placement table. Cheap to clone; every cell holds its own copy.
#[derive(Clone, Debug)]
pub struct Router {
    cells: u32,
    overrides: HashMap<OrgId, CellId>,
}

impl Router {
    /// A router over `cells` cells with pinned tenants in `overrides`.
    pub fn new(cells: u32, overrides: impl IntoIterator<Item = (OrgId, u32)>) -> Result<Self> {
        if cells == 0 {
            return Err(Error::NoCells);
        }
        let mut table = HashMap::new();
        for (org, cell) in overrides {
            if cell >= cells {
                return Err(Error::OverrideOutOfRange {
                    org: org.to_string(),
                    cell,
                    cells,
                });
            }
            table.insert(org, CellId(cell));
        }
        Ok(Self {
            cells,
            overrides: table,
        })
    }

    /// Number of cells placement is computed over.
    pub fn cells(&self) -> u32 {
        self.cells
    }

    /// The cell that owns `org`.
    pub fn owner(&self, org: &OrgId) -> CellId {
        if let Some(cell) = self.overrides.get(org) {
            return *cell;
        }
        CellId(jump_hash(stable_hash(org.as_str().as_bytes()), self.cells))
    }
}

/// FNV-1a over the bytes, finished with the splitmix64 mixer so that similar
/// ids (`org-1`, `org-2`) spread evenly. Stable forever: changing it moves
/// tenants.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Jump consistent hash: maps `key` to a bucket in `0..buckets`.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b.wrapping_add(1) as f64)
            * ((1u64 << 31) as f64 / ((key >> 33).wrapping_add(1) as f64))) as i64;
    }
    // b is in 0..buckets because buckets >= 1 is checked by the caller.
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_ACME_HASH: u64 = 1_372_038_925_648_144_367;
    const PINNED_ORG_0_TO_7_ON_4_CELLS: [u32; 8] = [1, 2, 1, 2, 3, 0, 3, 0];

    fn orgs(n: usize) -> Vec<OrgId> {
        (0..n)
            .map(|i| OrgId::new(format!("org-{i}")).expect("valid org id"))
            .collect()
    }

    #[test]
    fn placement_is_balanced_for_10k_orgs() {
        // Tolerance: every cell within ±10 % of the mean for 10,000 orgs.
        for cells in [2u32, 4, 8, 16] {
            let router = Router::new(cells, []).expect("router");
            let mut counts = vec![0usize; cells as usize];
            for org in orgs(10_000) {
                counts[router.owner(&org).index()] += 1;
            }
            let mean = 10_000.0 / f64::from(cells);
            for (cell, count) in counts.iter().enumerate() {
                let dev = (*count as f64 - mean).abs() / mean;
                assert!(
                    dev < 0.10,
                    "cells={cells}: cell {cell} has {count} orgs, {:.1}% off the mean {mean}",
                    dev * 100.0
                );
            }
        }
    }

    #[test]
    fn growing_by_one_cell_moves_about_one_in_n_plus_one() {
        for n in [1u32, 2, 3, 7, 15] {
            let before = Router::new(n, []).expect("router");
            let after = Router::new(n + 1, []).expect("router");
            let all = orgs(10_000);
            let moved: Vec<_> = all
                .iter()
                .filter(|o| before.owner(o) != after.owner(o))
                .collect();
            // Every moved org moves to the new cell: nothing shuffles between old cells.
            assert!(moved.iter().all(|o| after.owner(o) == CellId(n)));
            let expected = 10_000.0 / f64::from(n + 1);
            let dev = (moved.len() as f64 - expected).abs() / expected;
            assert!(
                dev < 0.10,
                "N={n}: moved {} orgs, expected about {expected}",
                moved.len()
            );
        }
    }

    #[test]
    fn placement_is_stable_across_instances() {
        // Pinned values: if this test fails, tenants would move to other
        // cells after an upgrade. Never update these numbers casually.
        assert_eq!(stable_hash(b"acme"), PINNED_ACME_HASH);
        let router = Router::new(4, []).expect("router");
        let placed: Vec<u32> = orgs(8).iter().map(|o| router.owner(o).0).collect();
        assert_eq!(placed, PINNED_ORG_0_TO_7_ON_4_CELLS);
    }

    #[test]
    fn overrides_pin_and_are_checked() {
        let org = OrgId::new("pinned").expect("valid");
        let router = Router::new(3, [(org.clone(), 2)]).expect("router");
        assert_eq!(router.owner(&org), CellId(2));
        assert!(matches!(
            Router::new(3, [(org, 3)]),
            Err(Error::OverrideOutOfRange { cell: 3, .. })
        ));
        assert_eq!(Router::new(0, []).unwrap_err(), Error::NoCells);
    }
}
