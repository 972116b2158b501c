//! Check (fsck): walks everything reachable from the newest superblock,
//! verifies every block and tree invariant, and proves space accounting:
//! every metadata block is free, or referenced exactly once (tree node or
//! free-list block); with data references from the caller, every data block
//! is free or referenced exactly once.

use super::handle::Pool;
use super::options::OpenOptions;
use super::state::PoolState;
use crate::alloc::Extent;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::storage::Storage;
use crate::tree::TreeVisitor;
use std::path::Path;

/// Cache for a check: blocks are visited once, so a small cache will do.
const CHECK_CACHE_BYTES: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Meta,
    Data,
}

/// One thing wrong, at a block of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub device: Device,
    pub block: u64,
    pub what: String,
}

#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    /// Seq of the superblock checked.
    pub seq: u64,
    pub items: u64,
    pub meta_blocks_referenced: u64,
    pub meta_blocks_free: u64,
    pub data_blocks_referenced: u64,
    pub data_blocks_free: u64,
    /// Every metadata block the superblock reaches (tree nodes, free-list
    /// and free-space log blocks), sorted.
    pub referenced_meta_blocks: Vec<u64>,
    /// Records in the journal, not yet covered by a commit: the caller
    /// applies them at its next open. The state checked is the commit's,
    /// without them.
    pub journal_records: u64,
    /// Data blocks set aside for the journal (neither referenced nor free).
    pub data_blocks_journal: u64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

pub type DataRefs<'a> = &'a dyn Fn(&Key, &[u8]) -> Vec<Extent>;

impl Pool {
    /// Checks a pool that is not in use (fails with `InUse` if it is). Data
    /// space is not accounted (fscore does not know which values reference
    /// data): see `check_with_data_refs`.
    pub fn check(meta: &Path, data: &Path) -> Result<CheckReport> {
        let (meta_storage, data_storage) = super::handle::open_devices(meta, data, false)?;
        Pool::check_on(Box::new(meta_storage), Box::new(data_storage), None)
    }

    /// Checks pool storage given directly (tests use `SimDisk`); with `refs`
    /// data space is accounted too.
    pub fn check_on(
        meta: Box<dyn Storage>,
        data: Box<dyn Storage>,
        refs: Option<DataRefs<'_>>,
    ) -> Result<CheckReport> {
        let opts = OpenOptions {
            cache_bytes: CHECK_CACHE_BYTES,
            ..OpenOptions::default()
        };
        let mut state = match PoolState::open(meta, data, &opts) {
            Ok(state) => state,
            Err(Error::Corrupt { block, what }) => {
                let problems = vec![Problem {
                    device: Device::Meta,
                    block,
                    what,
                }];
                return Ok(CheckReport {
                    problems,
                    ..CheckReport::default()
                });
            }
            Err(error) => return Err(error),
        };
        Ok(check_state(&mut state, refs))
    }
}

/// Check with the data extents each leaf value references (`refs` returns
/// them; the volume engine knows its value format): then data space is
/// accounted too.
pub fn check_with_data_refs(
    meta: &Path,
    data: &Path,
    refs: impl Fn(&Key, &[u8]) -> Vec<Extent>,
) -> Result<CheckReport> {
    let (meta_storage, data_storage) = super::handle::open_devices(meta, data, false)?;
    Pool::check_on(Box::new(meta_storage), Box::new(data_storage), Some(&refs))
}

struct Walk<'a> {
    nodes: Vec<u64>,
    data: Vec<Extent>,
    problems: Vec<Problem>,
    refs: Option<DataRefs<'a>>,
}

impl TreeVisitor for Walk<'_> {
    fn node(&mut self, blkno: u64) {
        self.nodes.push(blkno);
    }
    fn item(&mut self, key: &Key, value: &[u8]) {
        if let Some(refs) = self.refs {
            self.data.extend(refs(key, value));
        }
    }
    fn problem(&mut self, block: u64, what: String) {
        self.problems.push(Problem {
            device: Device::Meta,
            block,
            what,
        });
    }
}

/// Checks a state. For a live handle busy space counts as free (it is free
/// once the open transaction commits), and COW'd-away blocks are busy.
fn check_state(state: &mut PoolState, refs: Option<DataRefs<'_>>) -> CheckReport {
    let mut walk = Walk {
        nodes: Vec::new(),
        data: Vec::new(),
        problems: Vec::new(),
        refs,
    };
    let items = state.tree.walk(&mut state.store, &mut walk);
    if items != state.tree.items {
        let what = format!(
            "tree holds {items} items, superblock says {}",
            state.tree.items
        );
        walk.problem(state.tree.root.blkno, what);
    }
    let mut report = CheckReport {
        seq: state.sb.seq,
        items,
        ..CheckReport::default()
    };
    // Metadata: tree nodes, free-list chain, free (and busy) extents.
    let mut owned: Vec<(Extent, &'static str)> = walk
        .nodes
        .iter()
        .map(|blkno| (Extent::new(*blkno, 1), "a tree node"))
        .collect();
    owned.extend(
        state
            .freelist_chain
            .iter()
            .map(|r| (Extent::new(r.blkno, 1), "a free-list block")),
    );
    owned.extend(
        state
            .freelog_chain
            .iter()
            .map(|r| (Extent::new(r.blkno, 1), "a free-space log block")),
    );
    report.meta_blocks_referenced = owned.len() as u64;
    report.referenced_meta_blocks = owned.iter().map(|(extent, _)| extent.start).collect();
    report.referenced_meta_blocks.sort_unstable();
    report.journal_records = state
        .journal
        .replay
        .as_ref()
        .map_or(0, |r| r.records.len() as u64);
    let meta_free = state.store.alloc.free_after_commit();
    report.meta_blocks_free = meta_free.iter().map(|extent| extent.len).sum();
    owned.extend(meta_free.iter().map(|extent| (*extent, "free")));
    let (first, end) = state.store.alloc.range();
    account(Device::Meta, first, end, owned, &mut walk.problems);
    if let Err(what) = state.store.alloc.verify() {
        walk.problems.push(Problem {
            device: Device::Meta,
            block: first,
            what,
        });
    }
    // Data: referenced extents (when the caller says which) and free ones.
    let data_free = state.data_alloc.free_after_commit();
    report.data_blocks_free = data_free.iter().map(|extent| extent.len).sum();
    report.data_blocks_referenced = walk.data.iter().map(|extent| extent.len).sum();
    report.data_blocks_journal = state.journal.region.len;
    if walk.refs.is_some() {
        let mut owned: Vec<(Extent, &'static str)> = walk
            .data
            .iter()
            .map(|extent| (*extent, "referenced"))
            .collect();
        let journal = state.journal.region;
        if journal.len > 0 {
            owned.push((journal, "the journal"));
        }
        owned.extend(data_free.iter().map(|extent| (*extent, "free")));
        let (first, end) = state.data_alloc.range();
        account(Device::Data, first, end, owned, &mut walk.problems);
    }
    report.problems = walk.problems;
    report
}

/// Sorts the owned extents and sweeps the device: an overlap is a block
/// owned twice, a gap a leaked block.
fn account(
    device: Device,
    first: u64,
    end: u64,
    mut owned: Vec<(Extent, &'static str)>,
    problems: &mut Vec<Problem>,
) {
    /// Problems reported per device sweep: a badly broken pool could
    /// otherwise produce one per block.
    const PROBLEMS_MAX: usize = 1000;
    owned.sort_unstable_by_key(|(extent, _)| (extent.start, extent.len));
    let mut next = first;
    let mut previous_owner = "the superblock area";
    let mut found = 0;
    let mut report = |block: u64, what: String| {
        if found < PROBLEMS_MAX {
            problems.push(Problem {
                device,
                block,
                what,
            });
        }
        found += 1;
    };
    for (extent, owner) in owned {
        if extent.len == 0 || extent.end() > end {
            report(
                extent.start,
                format!(
                    "{owner} extent {}+{} outside the device",
                    extent.start, extent.len
                ),
            );
            continue;
        }
        if extent.start < next {
            report(
                extent.start,
                format!(
                    "block {} is {owner} and also {previous_owner}",
                    extent.start
                ),
            );
        } else if extent.start > next {
            report(
                next,
                format!(
                    "blocks {next}..{} are neither free nor referenced (leaked)",
                    extent.start
                ),
            );
        }
        next = next.max(extent.end());
        previous_owner = owner;
    }
    if next < end {
        report(
            next,
            format!("blocks {next}..{end} are neither free nor referenced (leaked)"),
        );
    }
}

/// Verifies a live handle: tree, allocators, and accounting with the open
/// transaction's busy space counted as free.
pub(crate) fn verify_live(state: &mut PoolState) -> Result<()> {
    let report = check_state(state, None);
    if let Err(what) = state.data_alloc.verify() {
        return Err(Error::corrupt(0, format!("data allocator: {what}")));
    }
    match report.problems.first() {
        None => Ok(()),
        Some(problem) => Err(Error::corrupt(
            problem.block,
            format!("{:?}: {}", problem.device, problem.what),
        )),
    }
}
