//! `VolumeHandle`: the `BlockTarget` a front end serves. One per front-end
//! thread, each with its own `DataIo`; they share the `Volume`.
//!
//! Write path for each chunk of at most `CHUNK_BLOCKS` blocks:
//! 1. lock the chunk's virtual blocks and look them up;
//! 2. partial blocks at the edges are read (checksum verified) and merged;
//! 3. under a transaction gate pass: a block mapped by the open transaction
//!    is overwritten in place, any other gets a newly allocated block
//!    (copy-on-write: the last commit's data is never touched), registered
//!    as in flight; without in-place blocks the pass is let go; a write
//!    made through `write_answering` is answered here (`acked`);
//! 4. data is written in runs of contiguous physical blocks;
//! 5. under a pass, map items are inserted with each block's crc32c,
//!    replaced blocks freed, and the new blocks are no longer in flight.
//!
//! Reads take no lock (while answered writes are unfinished they wait
//! until the range locks held on their blocks when they began are
//! released, not for writers that come later): they look up the chunk, read
//! mapped runs, verify each block's crc32c, and fill unmapped blocks with
//! zeros without I/O. A mismatch is first told apart from a racing writer
//! (the block is locked, or its mapping changed): only a mismatch on a
//! stable mapping is EIO.

use super::acked::{AckedWrite, AckedWrites};
use super::coalesce::CoalescingWrites;
use super::data_io::DataIo;
use super::journal::Record;
use super::map::{self, Mapping, BLOCK_BYTES};
use super::volume::{target_error, Volume};
use crate::aligned::{is_block_aligned, AlignedBuf};
use crate::target::{check_range, Allocation, BlockTarget, TargetError, TargetResult};
use fscore::Extent;
use futures::channel::oneshot;
use futures::{StreamExt, TryStreamExt};
use log_ratelimit::{log_limited, LogLimit};
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A client can read a corrupted block, or a failing device's, in a loop.
static DATA_ERRORS: LogLimit = LogLimit::new("volume: data errors");

/// Blocks handled as one unit (1 MiB): bounds the bounce buffer, the lock
/// range and the allocation of one step of a large request.
pub const CHUNK_BLOCKS: u64 = 256;
/// Blocks unmapped per gate pass when discarding: long discards let commits
/// in between.
pub const DISCARD_CHUNK_BLOCKS: u64 = 4096;
/// Data I/Os one request keeps in flight when its chunk maps to many
/// physical runs: enough to hide latency, and with the NBD in-flight bound
/// it stays within what an io_uring absorbs.
pub const RUNS_IN_FLIGHT_MAX: usize = 16;
/// Allocations of at least this many blocks that find no free extent large
/// enough ask for a commit when that much space is busy.
pub const FRAGMENTED_COMMIT_BLOCKS: u64 = 64;
/// Times a read re-checks a block whose checksum did not match while a
/// writer was changing it, before calling it corrupt.
pub const READ_RETRIES_MAX: u32 = 16;
/// Mapped blocks one allocation query visits (NBD BLOCK_STATUS): bounds
/// its scan and its answer (descriptors); the client asks again for the
/// rest of the range.
pub const ALLOCATION_MAPPED_MAX: usize = 8192;

pub struct VolumeHandle<D: DataIo> {
    volume: Arc<Volume>,
    /// Adjacent data writes of concurrent requests go out as one I/O.
    io: CoalescingWrites<D>,
}

impl<D: DataIo> VolumeHandle<D> {
    pub(crate) fn new(volume: Arc<Volume>, io: D) -> VolumeHandle<D> {
        VolumeHandle {
            volume,
            io: CoalescingWrites::new(io),
        }
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// The data I/O this handle uses.
    pub fn io(&self) -> &D {
        self.io.inner()
    }

    /// The mappings of blocks `first..first + count` (None: unwritten).
    fn lookup(&self, first: u64, count: u64) -> TargetResult<Mappings> {
        let v = &self.volume;
        let mut out: Mappings = smallvec::smallvec![None; count as usize];
        let mut bad = None;
        // Records one item; false (stop) at a corrupt one.
        let mut found = |vblock: u64, value: &[u8]| match Mapping::decode(value) {
            Some(m) => {
                out[(vblock - first) as usize] = Some(m);
                true
            }
            None => {
                bad = Some(vblock);
                false
            }
        };
        if count == 1 {
            // One block: an exact-key lookup (the leaf's hash table), no scan.
            v.pool
                .get_with(&map::map_key(v.volume_id, first), &mut |value| {
                    found(first, value);
                })
                .map_err(target_error)?;
        } else {
            let start = map::map_key(v.volume_id, first);
            let end = map::map_key(v.volume_id, first + count - 1);
            v.pool
                .range_with(&start, &end, &mut |key, value| found(key.lo, value))
                .map_err(target_error)?;
        }
        if let Some(vblock) = bad {
            return Err(corrupt_map_item(vblock));
        }
        Ok(out)
    }

    fn lookup_one(&self, vblock: u64) -> TargetResult<Option<Mapping>> {
        Ok(self.lookup(vblock, 1)?[0])
    }

    /// Waits until no write of blocks `first..=last` answered before the
    /// call is still being written (it holds their range lock until they
    /// are mapped), so the map shows every write already answered. Writers
    /// arriving meanwhile are not waited for: no load can starve the wait.
    async fn settle_blocks(&self, first: u64, last: u64) {
        if self.volume.acked.any_pending() {
            self.volume.locks.wait_for_holders(first, last).await;
        }
    }

    /// Reads the mapped blocks of `first..` into `buf` (block i at i*4096),
    /// one I/O per run of physically contiguous blocks; unmapped blocks are
    /// zero-filled without I/O. Returns the indexes whose checksum did not match.
    async fn read_blocks(
        &self,
        first: u64,
        maps: &[Option<Mapping>],
        buf: &mut [u8],
    ) -> TargetResult<Vec<usize>> {
        // Split the buffer into one slice per run of physically contiguous
        // mapped blocks (zeroing the unmapped gaps), then read the runs
        // concurrently: a fragmented chunk must not cost one I/O latency
        // per block.
        let mut runs: smallvec::SmallVec<[(usize, u64, &mut [u8]); 1]> = smallvec::SmallVec::new();
        let mut rest: &mut [u8] = buf;
        let mut i = 0;
        while i < maps.len() {
            let Some(m) = maps[i] else {
                let (gap, tail) = rest.split_at_mut(BLOCK_BYTES as usize);
                gap.fill(0);
                rest = tail;
                i += 1;
                continue;
            };
            let mut run = 1;
            while i + run < maps.len()
                && maps[i + run].is_some_and(|n| n.pblock == m.pblock + run as u64)
            {
                run += 1;
            }
            let (span, tail) = rest.split_at_mut(run * BLOCK_BYTES as usize);
            runs.push((i, m.pblock, span));
            rest = tail;
            i += run;
        }
        if runs.len() == 1 {
            // One run (every small read, and large reads of sequentially
            // written data): no stream machinery.
            let (i, pblock, span) = runs.pop().expect("one run");
            drop(runs);
            self.read_run(first + i as u64, pblock, span).await?;
        } else {
            let reads = runs
                .into_iter()
                .map(|(i, pblock, span)| self.read_run(first + i as u64, pblock, span));
            futures::stream::iter(reads)
                .buffer_unordered(RUNS_IN_FLIGHT_MAX)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Ok(mismatches(maps, buf))
    }

    /// Reads the run of data blocks from `pblock` holding volume block `vblock` on.
    async fn read_run(&self, vblock: u64, pblock: u64, span: &mut [u8]) -> TargetResult<()> {
        let read = self.io.read_at(pblock * BLOCK_BYTES, span).await;
        read.map_err(|e| data_error("read", vblock, e))
    }

    /// Writes `span` to the data blocks from `pblock`, for volume block `vblock` on.
    async fn write_run(&self, vblock: u64, pblock: u64, span: &[u8]) -> TargetResult<()> {
        let written = self.io.write_at(pblock * BLOCK_BYTES, span).await;
        written.map_err(|e| data_error("write", vblock, e))
    }

    /// A block whose checksum did not match: wait out a racing writer and
    /// read it again, until its mapping is stable; then it is corrupt.
    async fn reread_block(
        &self,
        vblock: u64,
        mut seen: Mapping,
        block: &mut [u8],
    ) -> TargetResult<()> {
        for _ in 0..READ_RETRIES_MAX {
            self.volume.locks.wait_for_holders(vblock, vblock).await;
            let now = self.lookup_one(vblock)?;
            match now {
                None => {
                    block.fill(0);
                    return Ok(());
                }
                Some(m) if m == seen && !self.volume.locks.is_locked(vblock, vblock) => break,
                Some(m) => {
                    seen = m;
                    if self
                        .read_blocks(vblock, &[Some(m)], block)
                        .await?
                        .is_empty()
                    {
                        return Ok(());
                    }
                }
            }
        }
        log_limited!(
            DATA_ERRORS,
            log::Level::Error,
            "volume {}: checksum mismatch at volume offset {} (data block {})",
            self.volume.volume_id,
            vblock * BLOCK_BYTES,
            seen.pblock
        );
        Err(TargetError::Io(format!(
            "checksum mismatch at volume offset {}",
            vblock * BLOCK_BYTES
        )))
    }

    /// Reads whole blocks `first..first + count` into `buf`, verified.
    async fn read_chunk(&self, first: u64, count: u64, buf: &mut [u8]) -> TargetResult<()> {
        let maps = self.lookup(first, count)?;
        for i in self.read_blocks(first, &maps, buf).await? {
            let block = &mut buf[i * BLOCK_BYTES as usize..(i + 1) * BLOCK_BYTES as usize];
            self.reread_block(
                first + i as u64,
                maps[i].expect("only mapped blocks mismatch"),
                block,
            )
            .await?;
        }
        Ok(())
    }

    /// Writes bytes `data` at `offset`, all inside one chunk of blocks.
    ///
    /// Lock order: the chunk's block range, then a gate pass. A pass is
    /// never held while waiting for a range lock: a commit waits for every
    /// pass, and a range-lock holder may be waiting for the gate.
    async fn write_chunk(
        &self,
        offset: u64,
        data: &[u8],
        accept: Option<&Acceptance<'_>>,
    ) -> TargetResult<()> {
        let v = &*self.volume;
        let first = offset / BLOCK_BYTES;
        let last = (offset + data.len() as u64 - 1) / BLOCK_BYTES;
        let count = last - first + 1;
        debug_assert!(count <= CHUNK_BLOCKS);
        let _locked = v.locks.lock(first, last).await;
        // Only writers and discards change mappings, under the range lock:
        // these stay valid until it is released.
        let old = self.lookup(first, count)?;

        let head = (offset % BLOCK_BYTES) as usize;
        let tail = ((offset + data.len() as u64) % BLOCK_BYTES) as usize;
        // Whole blocks in an aligned buffer are written as they are; others
        // are merged with the old contents of their edge blocks first.
        let merged = if head == 0 && tail == 0 && is_block_aligned(data) {
            None
        } else {
            let mut buf = AlignedBuf::reuse((count * BLOCK_BYTES) as usize);
            if head != 0 {
                self.read_edge(first, old[0], &mut buf[..BLOCK_BYTES as usize])
                    .await?;
            }
            if tail != 0 && (last != first || head == 0) {
                let at = ((count - 1) * BLOCK_BYTES) as usize;
                self.read_edge(last, old[count as usize - 1], &mut buf[at..])
                    .await?;
            }
            buf[head..head + data.len()].copy_from_slice(data);
            Some(buf)
        };
        let buf: &[u8] = merged.as_deref().unwrap_or(data);
        // Checksummed now, while the bytes are in the CPU's cache (just
        // copied from the socket or merged), not after the data write.
        let crcs: PerBlock<u32> = buf
            .chunks_exact(BLOCK_BYTES as usize)
            .map(crc32c::crc32c)
            .collect();

        let pass = v.gate.enter().await;
        // In place for blocks mapped since the last sync or commit (no
        // durable state refers to them); new ones else.
        let open_gen = v.open_gen.load(Ordering::Acquire);
        let in_place: PerBlock<Option<u64>> = old
            .iter()
            .map(|m| m.filter(|m| m.txn == open_gen).map(|m| m.pblock))
            .collect();
        let needed = in_place.iter().filter(|p| p.is_none()).count() as u64;
        let unwritten = old.iter().any(|m| m.is_none());
        if unwritten && needed > 0 && v.pool.info().data_free_blocks < needed + v.reserve_blocks {
            // The reserve is for copy-on-write of written blocks only.
            return Err(TargetError::NoSpace);
        }
        let fresh = self.allocate(needed)?;
        v.in_flight.register(&fresh);
        let mut fresh_blocks = fresh.iter().flat_map(|e| e.start..e.end());
        let targets: PerBlock<u64> = in_place
            .iter()
            .map(|p| p.unwrap_or_else(|| fresh_blocks.next().expect("allocated enough")))
            .collect();

        // A block overwritten in place is in no durable state yet, and the
        // next sync or commit must wait for the write: keep the pass. New blocks are
        // carried by commits meanwhile (`InFlightAllocations`): let go.
        let pass = if in_place.iter().any(Option::is_some) {
            Some(pass)
        } else {
            drop(pass);
            None
        };
        // Locked, allocated, merged: the write may be answered now.
        if let Some(accept) = accept {
            accept.accept();
        }
        let written = self.write_runs(first, &targets, buf).await;
        let _pass = match pass {
            Some(pass) => pass,
            None => v.gate.enter().await,
        };
        let mapped = match written {
            Ok(()) => self.map_written(first, &old, &targets, &in_place, &crcs),
            Err(e) => {
                self.free_all(&fresh);
                Err(e)
            }
        };
        // Under the same pass as the mapping: no commit sees them both
        // mapped and in flight.
        v.in_flight.unregister(&fresh);
        mapped?;
        v.note_change();
        Ok(())
    }

    /// Maps the blocks of a chunk whose data is written (`targets`: the
    /// physical block of each) with their checksums (`crcs`), frees the
    /// blocks they replace, and logs each change for the next sync. Called
    /// under a gate pass.
    fn map_written(
        &self,
        first: u64,
        old: &[Option<Mapping>],
        targets: &[u64],
        in_place: &[Option<u64>],
        crcs: &[u32],
    ) -> TargetResult<()> {
        let v = &*self.volume;
        // New blocks belong to the generation open now: allocated in it,
        // or carried into it by the commits since the allocation.
        let open_gen = v.open_gen.load(Ordering::Acquire);
        for (i, &pblock) in targets.iter().enumerate() {
            let txn = match old[i] {
                Some(m) if m.pblock == pblock => m.txn,
                _ => open_gen,
            };
            let mapping = Mapping {
                pblock,
                txn,
                crc: crcs[i],
            };
            if let Err(e) = v.pool.insert(
                &map::map_key(v.volume_id, first + i as u64),
                &mapping.encode(),
            ) {
                // Blocks i.. were not mapped: give back the new ones among them.
                let unused: Vec<Extent> = targets[i..]
                    .iter()
                    .zip(&in_place[i..])
                    .filter(|(_, p)| p.is_none())
                    .map(|(&b, _)| Extent::new(b, 1))
                    .collect();
                self.free_all(&unused);
                return Err(target_error(e));
            }
            // Logged with the change it describes, before anything can fail.
            let record = Record::Map {
                volume: v.volume_id,
                vblock: first + i as u64,
                pblock,
                crc: mapping.crc,
            };
            v.pool.log(&record.encode()).map_err(target_error)?;
            if let Some(replaced) = old[i].filter(|m| m.pblock != pblock) {
                v.pool
                    .free_data(Extent::new(replaced.pblock, 1))
                    .map_err(target_error)?;
            }
        }
        Ok(())
    }

    /// Old contents of a block about to be partly overwritten (zeros if unwritten).
    async fn read_edge(
        &self,
        vblock: u64,
        old: Option<Mapping>,
        block: &mut [u8],
    ) -> TargetResult<()> {
        if !self.read_blocks(vblock, &[old], block).await?.is_empty() {
            log_limited!(
                DATA_ERRORS,
                log::Level::Error,
                "volume {}: checksum mismatch at volume offset {}",
                self.volume.volume_id,
                vblock * BLOCK_BYTES
            );
            return Err(TargetError::Io(format!(
                "checksum mismatch at volume offset {} (read-modify-write)",
                vblock * BLOCK_BYTES
            )));
        }
        Ok(())
    }

    /// Allocates `blocks` data blocks in as few extents as the pool gives.
    fn allocate(&self, blocks: u64) -> TargetResult<Extents> {
        let mut got = Extents::new();
        let mut have = 0;
        while have < blocks {
            match self.volume.pool.alloc_data(blocks - have) {
                Ok(extent) => {
                    if got.is_empty() && extent.len < blocks && blocks >= FRAGMENTED_COMMIT_BLOCKS {
                        // No free extent holds this write. Space freed by
                        // earlier overwrites may (a sequential overwrite
                        // frees whole runs), but it is busy until a commit:
                        // ask for one so later writes find it.
                        if self.volume.pool.info().data_busy_blocks >= blocks {
                            self.volume.commit_soon();
                        }
                    }
                    have += extent.len;
                    got.push(extent);
                }
                Err(e) => {
                    self.free_all(&got);
                    return Err(target_error(e));
                }
            }
        }
        Ok(got)
    }

    fn free_all(&self, extents: &[Extent]) {
        for &extent in extents {
            if let Err(e) = self.volume.pool.free_data(extent) {
                log::error!("volume: could not give back unused data blocks {extent:?}: {e}");
            }
        }
    }

    async fn write_runs(&self, first: u64, targets: &[u64], buf: &[u8]) -> TargetResult<()> {
        let runs = map::consecutive_runs(targets, |&pblock| pblock, usize::MAX);
        if let [ref run] = runs[..] {
            debug_assert_eq!(run.len(), targets.len());
            return self.write_run(first, targets[0], buf).await;
        }
        // Concurrently, as for reads: fresh blocks on a fragmented pool are
        // not contiguous.
        let writes = runs.into_iter().map(|run| {
            let span = &buf[run.start * BLOCK_BYTES as usize..run.end * BLOCK_BYTES as usize];
            self.write_run(first + run.start as u64, targets[run.start], span)
        });
        futures::stream::iter(writes)
            .buffer_unordered(RUNS_IN_FLIGHT_MAX)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Writes one chunk. On NoSpace: commit if space is busy (freed in the
    /// open transaction, allocatable once durable) and retry; a chunk that
    /// still does not fit goes block by block, so overwrites of written
    /// blocks keep working on a full pool (each needs one reserved block).
    /// With `accept`, the chunk may be answered early, but not once it goes
    /// block by block (a later block's ENOSPC must reach its request).
    async fn write_with_retry(
        &self,
        offset: u64,
        data: &[u8],
        accept: Option<&Acceptance<'_>>,
    ) -> TargetResult<()> {
        // An answered write that failed is not tried again: between the
        // tries its range lock is free and a read would see the old data.
        let answered = || accept.is_some_and(Acceptance::answered);
        match self.write_chunk(offset, data, accept).await {
            Err(TargetError::NoSpace) if !answered() => {}
            other => return other,
        }
        if self.volume.pool.info().data_busy_blocks > 0 {
            self.volume.commit_and_wait().await?;
            match self.write_chunk(offset, data, accept).await {
                Err(TargetError::NoSpace) if !answered() => {}
                other => return other,
            }
        }
        if (offset % BLOCK_BYTES) as usize + data.len() <= BLOCK_BYTES as usize {
            return Err(TargetError::NoSpace);
        }
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let n = ((BLOCK_BYTES - at % BLOCK_BYTES) as usize).min(data.len() - done);
            let piece = &data[done..done + n];
            match self.write_chunk(at, piece, None).await {
                Err(TargetError::NoSpace) if self.volume.pool.info().data_busy_blocks > 0 => {
                    self.volume.commit_and_wait().await?;
                    self.write_chunk(at, piece, None).await?;
                }
                other => other?,
            }
            done += n;
        }
        Ok(())
    }

    /// Unmaps whole blocks `first..=last` and frees their data blocks.
    async fn unmap_blocks(&self, first: u64, last: u64) -> TargetResult<()> {
        let v = &*self.volume;
        let mut at = first;
        while at <= last {
            let end = last.min(at + DISCARD_CHUNK_BLOCKS - 1);
            // Range lock, then pass: the order of `write_chunk`.
            let _locked = v.locks.lock(at, end).await;
            let _pass = v.gate.enter().await;
            let start = map::map_key(v.volume_id, at);
            let stop = map::map_key(v.volume_id, end);
            let mapped = v
                .pool
                .range(&start, &stop, DISCARD_CHUNK_BLOCKS as usize)
                .map_err(target_error)?;
            for (key, value) in mapped {
                let m = Mapping::decode(&value).ok_or_else(|| {
                    TargetError::Io(format!(
                        "corrupt map item at volume offset {}",
                        key.lo * BLOCK_BYTES
                    ))
                })?;
                v.pool.delete(&key).map_err(target_error)?;
                let record = Record::Unmap {
                    volume: v.volume_id,
                    vblock: key.lo,
                    pblock: m.pblock,
                };
                v.pool.log(&record.encode()).map_err(target_error)?;
                v.pool
                    .free_data(Extent::new(m.pblock, 1))
                    .map_err(target_error)?;
            }
            v.note_change();
            at = end + 1;
        }
        Ok(())
    }

    /// Writes zeros over `offset..offset + len`, allocating (no unmap).
    async fn write_zero_bytes(&self, offset: u64, len: u64) -> TargetResult<()> {
        static ZEROS: [u8; (CHUNK_BLOCKS * BLOCK_BYTES) as usize] =
            [0; (CHUNK_BLOCKS * BLOCK_BYTES) as usize];
        for (at, n) in chunks(offset, len) {
            self.write_with_retry(at, &ZEROS[..n as usize], None)
                .await?;
        }
        Ok(())
    }
}

/// A write that may be answered before it is done (`acked`).
struct Acceptance<'a> {
    stage: RefCell<Stage<'a>>,
    writes: &'a AckedWrites,
}

enum Stage<'a> {
    Unanswered(oneshot::Sender<TargetResult<()>>),
    /// Answered Ok: later flushes wait for it.
    Answered(AckedWrite<'a>),
}

impl<'a> Acceptance<'a> {
    fn new(answer: oneshot::Sender<TargetResult<()>>, writes: &'a AckedWrites) -> Self {
        Acceptance {
            stage: RefCell::new(Stage::Unanswered(answer)),
            writes,
        }
    }

    /// Answers Ok, the first time.
    fn accept(&self) {
        let mut stage = self.stage.borrow_mut();
        if !matches!(*stage, Stage::Unanswered(_)) {
            return;
        }
        let answered = Stage::Answered(self.writes.begin());
        if let Stage::Unanswered(answer) = std::mem::replace(&mut *stage, answered) {
            let _ = answer.send(Ok(()));
        }
    }

    fn answered(&self) -> bool {
        matches!(*self.stage.borrow(), Stage::Answered(_))
    }

    /// The write is done: its result is the answer if it was not answered
    /// yet, else the next flush's.
    fn finish(self, offset: u64, result: TargetResult<()>) {
        match self.stage.into_inner() {
            Stage::Answered(answered) => {
                if let Err(e) = &result {
                    log_limited!(
                        DATA_ERRORS,
                        log::Level::Error,
                        "write at volume offset {offset} failed after its answer: {e}"
                    );
                }
                answered.end(result);
            }
            Stage::Unanswered(answer) => {
                let _ = answer.send(result);
            }
        }
    }
}

/// A map item of volume block `vblock` that does not decode.
fn corrupt_map_item(vblock: u64) -> TargetError {
    TargetError::Io(format!(
        "corrupt map item at volume offset {}",
        vblock * BLOCK_BYTES
    ))
}

/// A failed data-device `what` ("read", "write") for volume block
/// `vblock`, reported with its volume offset.
fn data_error(what: &str, vblock: u64, e: std::io::Error) -> TargetError {
    let offset = vblock * BLOCK_BYTES;
    if e.raw_os_error() == Some(libc::ENOSPC) {
        // The pool had the block; the file system under a sparse data file
        // did not. The client is told ENOSPC, as for a full pool (a thin
        // device's answer), not an I/O error.
        log_limited!(
            DATA_ERRORS,
            log::Level::Error,
            "data {what} at volume offset {offset}: {e}: the data device's file system \
             is full (a sparse pool takes host space as it is written; \
             `mkfs --preallocate` reserves it)"
        );
        return TargetError::NoSpace;
    }
    TargetError::Io(format!("data {what} at volume offset {offset}: {e}"))
}

/// A value per block of a chunk; inline for small requests (no allocation
/// on a 4 KiB write's path).
type PerBlock<T> = smallvec::SmallVec<[T; 4]>;
/// Mappings of a chunk's blocks.
type Mappings = PerBlock<Option<Mapping>>;
/// The extents a chunk's new blocks came in; usually one.
type Extents = smallvec::SmallVec<[Extent; 2]>;

/// Indexes of the mapped blocks in `buf` whose crc32c is not the mapping's.
fn mismatches(maps: &[Option<Mapping>], buf: &[u8]) -> Vec<usize> {
    maps.iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let m = (*m)?;
            let block = &buf[i * BLOCK_BYTES as usize..(i + 1) * BLOCK_BYTES as usize];
            (crc32c::crc32c(block) != m.crc).then_some(i)
        })
        .collect()
}

/// Splits `offset..offset + len` at chunk boundaries: (offset, length) pairs.
fn chunks(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let chunk_bytes = CHUNK_BLOCKS * BLOCK_BYTES;
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = ((at / chunk_bytes + 1) * chunk_bytes).min(end);
        let piece = (at, next - at);
        at = next;
        Some(piece)
    })
}

impl<D: DataIo> BlockTarget for VolumeHandle<D> {
    fn size_bytes(&self) -> u64 {
        self.volume.size_bytes
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> TargetResult<()> {
        check_range(self.volume.size_bytes, offset, buf.len() as u64)?;
        // Whole blocks into an aligned buffer: read straight into it.
        let direct = offset.is_multiple_of(BLOCK_BYTES) && is_block_aligned(buf);
        let mut done = 0usize;
        for (at, n) in chunks(offset, buf.len() as u64) {
            let first = at / BLOCK_BYTES;
            let last = (at + n - 1) / BLOCK_BYTES;
            let count = last - first + 1;
            self.settle_blocks(first, last).await;
            if direct {
                self.read_chunk(first, count, &mut buf[done..done + n as usize])
                    .await?;
                done += n as usize;
                continue;
            }
            let mut bounce = AlignedBuf::reuse((count * BLOCK_BYTES) as usize);
            self.read_chunk(first, count, &mut bounce).await?;
            let skip = (at % BLOCK_BYTES) as usize;
            buf[done..done + n as usize].copy_from_slice(&bounce[skip..skip + n as usize]);
            done += n as usize;
        }
        Ok(())
    }

    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> TargetResult<()> {
        check_range(self.volume.size_bytes, offset, data.len() as u64)?;
        let mut done = 0usize;
        for (at, n) in chunks(offset, data.len() as u64) {
            self.write_with_retry(at, &data[done..done + n as usize], None)
                .await?;
            done += n as usize;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> TargetResult<()> {
        // Writes answered before this flush are written first; one that
        // failed after its answer fails this flush (after the sync of the rest).
        let settled = self.volume.acked.settle().await;
        self.volume.sync_and_wait().await?;
        settled
    }

    async fn write_answering(
        &self,
        offset: u64,
        data: &[u8],
        answer: oneshot::Sender<TargetResult<()>>,
    ) {
        if let Err(e) = check_range(self.volume.size_bytes, offset, data.len() as u64) {
            let _ = answer.send(Err(e));
            return;
        }
        if chunks(offset, data.len() as u64).count() != 1 {
            // Several chunks are accepted one after another: a later one's
            // ENOSPC must still be this request's answer.
            let _ = answer.send(self.write(offset, data, false).await);
            return;
        }
        let acceptance = Acceptance::new(answer, &self.volume.acked);
        let result = self.write_with_retry(offset, data, Some(&acceptance)).await;
        acceptance.finish(offset, result);
    }

    async fn discard(&self, offset: u64, len: u64) -> TargetResult<()> {
        check_range(self.volume.size_bytes, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let first_whole = offset.div_ceil(BLOCK_BYTES);
        let end_whole = end / BLOCK_BYTES;
        // Partly covered blocks keep their block: zero their part, unless
        // they are unwritten (already zeros, nothing to allocate).
        let mut edges = vec![offset / BLOCK_BYTES, (end - 1) / BLOCK_BYTES];
        edges.dedup();
        for block in edges {
            self.settle_blocks(block, block).await;
            let from = offset.max(block * BLOCK_BYTES);
            let to = end.min((block + 1) * BLOCK_BYTES);
            if to - from < BLOCK_BYTES && self.lookup_one(block)?.is_some() {
                self.write_zero_bytes(from, to - from).await?;
            }
        }
        if first_whole >= end_whole {
            return Ok(());
        }
        self.unmap_blocks(first_whole, end_whole - 1).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> TargetResult<()> {
        if may_unmap {
            return self.discard(offset, len).await;
        }
        check_range(self.volume.size_bytes, offset, len)?;
        self.write_zero_bytes(offset, len).await
    }

    async fn allocation(&self, offset: u64, len: u64) -> TargetResult<Vec<Allocation>> {
        check_range(self.volume.size_bytes, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let v = &*self.volume;
        let first = offset / BLOCK_BYTES;
        let last = (offset + len - 1) / BLOCK_BYTES;
        self.settle_blocks(first, last).await;
        // One scan of the map's keys in the range, bounded by the mapped
        // blocks it visits, not by the range: a hole of any size costs one
        // descent, and a written range is answered in parts.
        let mut mapped = Vec::new();
        let mut scanned_to = last + 1;
        let mut bad = None;
        let start = map::map_key(v.volume_id, first);
        let end = map::map_key(v.volume_id, last);
        v.pool
            .range_with(&start, &end, &mut |key, value| {
                if Mapping::decode(value).is_none() {
                    bad = Some(key.lo);
                    return false;
                }
                if mapped.len() == ALLOCATION_MAPPED_MAX {
                    scanned_to = key.lo;
                    return false;
                }
                mapped.push(key.lo);
                true
            })
            .map_err(target_error)?;
        if let Some(vblock) = bad {
            return Err(corrupt_map_item(vblock));
        }
        let end_bytes = (offset + len).min(scanned_to * BLOCK_BYTES);
        Ok(allocation_runs(offset, end_bytes, &mapped))
    }
}

/// The runs of bytes `offset..end` given the mapped blocks among them
/// (ascending): mapped blocks are data, the others holes; a partial block
/// at either edge counts as its block.
fn allocation_runs(offset: u64, end: u64, mapped: &[u64]) -> Vec<Allocation> {
    let mut runs: Vec<Allocation> = Vec::new();
    let mut push = |from: u64, to: u64, hole: bool| {
        if to <= from {
            return;
        }
        match runs.last_mut() {
            Some(run) if run.hole == hole => run.bytes += to - from,
            _ => runs.push(Allocation {
                bytes: to - from,
                hole,
            }),
        }
    };
    let mut at = offset;
    for &block in mapped {
        let (block_start, block_end) = (block * BLOCK_BYTES, (block + 1) * BLOCK_BYTES);
        push(at, block_start.max(at).min(end), true);
        push(block_start.max(at), block_end.min(end), false);
        at = at.max(block_end.min(end));
    }
    push(at, end, true);
    runs
}

#[cfg(test)]
mod tests {
    use super::{allocation_runs, chunks, Allocation, BLOCK_BYTES};

    fn run(bytes: u64, hole: bool) -> Allocation {
        Allocation { bytes, hole }
    }

    #[test]
    fn allocation_runs_alternate_and_clip_partial_edge_blocks() {
        let b = BLOCK_BYTES;
        // Nothing mapped: one hole, whatever the range.
        assert_eq!(
            allocation_runs(512, 10 * b, &[]),
            vec![run(10 * b - 512, true)]
        );
        // Blocks 2, 3 and 7 of 0..10: hole, data, hole, data, hole.
        assert_eq!(
            allocation_runs(0, 10 * b, &[2, 3, 7]),
            vec![
                run(2 * b, true),
                run(2 * b, false),
                run(3 * b, true),
                run(b, false),
                run(2 * b, true)
            ]
        );
        // A range starting and ending inside mapped blocks.
        assert_eq!(
            allocation_runs(2 * b + 512, 7 * b + 1024, &[2, 3, 7]),
            vec![run(2 * b - 512, false), run(3 * b, true), run(1024, false)]
        );
        // A mapped block that starts the range, and one past its end.
        assert_eq!(
            allocation_runs(b, 3 * b, &[1, 9]),
            vec![run(b, false), run(b, true)]
        );
    }

    #[test]
    fn chunks_cover_the_range_at_chunk_boundaries() {
        let c: Vec<_> = chunks(512, 2 << 20).collect();
        assert_eq!(
            c,
            vec![(512, (1 << 20) - 512), (1 << 20, 1 << 20), (2 << 20, 512)]
        );
        assert_eq!(chunks(4096, 0).count(), 0);
    }
}
