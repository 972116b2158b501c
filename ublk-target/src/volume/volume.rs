//! `Volume`: a thin block device in a pool. It owns the pool, the commit
//! thread, the transaction gate and the block range locks; the per-thread
//! `VolumeHandle`s (one per front-end thread, each with its own `DataIo`)
//! do the reads and writes.
//!
//! Durability runs on one thread. A flush waits for a *sync*: every map
//! change since the last one is a record in fscore's journal (`journal`),
//! and a sync writes them to the journal region on the data device, then
//! flushes that device (fscore turns it into a commit when the region is
//! full).
//! Commits (every dirty block of the map written, the journal emptied) run
//! on a timer (`commit_interval_ms`), when the open transaction's dirty
//! metadata passes `dirty_bytes_max` or its unsynced records outgrow the
//! journal (which do not wait), and at close. Flushes that arrive while a
//! sync or commit runs are answered together by the next one (group
//! commit), or by the running one when nothing changed since it began.

use super::acked::AckedWrites;
use super::gate::Gate;
use super::handle::VolumeHandle;
use super::in_flight::InFlightAllocations;
use super::journal;
use super::locks::RangeLocks;
use super::map::{self, BLOCK_BYTES};
use crate::target::TargetError;
use fscore::{CheckReport, MkfsOptions, OpenOptions, Pool, PoolInfo};
use futures::channel::oneshot;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The one volume of a pool (the map key has room for more).
pub const VOLUME_ID: u64 = 0;
/// Commit at least this often while there are changes: bounds what a crash
/// loses for clients that never flush (ext4's default commit interval).
pub const COMMIT_INTERVAL_MS_DEFAULT: u64 = 5_000;
/// Commit when this much metadata is dirty: bounds the memory pinned by the
/// open transaction and the length of the commit that follows.
pub const DIRTY_BYTES_MAX_DEFAULT: u64 = 32 << 20;
/// Block cache of the pool: the map of a 2 GiB volume fits, and the
/// daemon's RSS stays well under 256 MiB.
pub const CACHE_BYTES_DEFAULT: u64 = 64 << 20;
/// Flushes waiting for one sync or commit: a bound on memory, far above the number
/// of requests the front ends allow in flight.
pub const FLUSH_WAITERS_MAX: usize = 4096;
/// Journal records waiting for a sync beyond this many bytes ask for a
/// commit (which covers them): bounds their memory for clients that write
/// without flushing.
pub const JOURNAL_PENDING_BYTES_MAX: u64 = 8 << 20;
/// Data blocks kept back from writes to unwritten blocks, so that on a full
/// pool an overwrite (copy-on-write needs a new block before the old one is
/// freed) still finds space. A quarter of a small device at most.
pub const RESERVE_BLOCKS_MAX: u64 = 256;

#[derive(Debug, Clone)]
pub struct VolumeOptions {
    pub cache_bytes: u64,
    pub commit_interval_ms: u64,
    pub dirty_bytes_max: u64,
}

impl Default for VolumeOptions {
    fn default() -> VolumeOptions {
        VolumeOptions {
            cache_bytes: CACHE_BYTES_DEFAULT,
            commit_interval_ms: COMMIT_INTERVAL_MS_DEFAULT,
            dirty_bytes_max: DIRTY_BYTES_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Pool(#[from] fscore::Error),
    #[error("the pool holds no volume {0} (was it made by `scoutfs-ublk mkfs`?)")]
    NoVolume(u64),
    #[error("invalid volume size {0}: must be a positive multiple of 4096")]
    BadSize(u64),
    #[error("the pool's journal does not fit its map ({0}); nothing was changed")]
    Journal(String),
    /// The commit that applies the journal at open failed: the pool is as
    /// it was (the journal stays until a commit takes it). The cause is in
    /// the message, mid-sentence, so it is not also the error's source
    /// (which `{:#}` would print a second time).
    #[error(
        "applying the {records} journal records synced after the last commit: {cause} \
         (nothing was lost: they are applied at the next open)"
    )]
    Replay {
        records: usize,
        cause: fscore::Error,
    },
    /// The last commit (at close) failed: changes since the last completed
    /// flush may be lost; what a flush made durable is kept.
    #[error("the final commit failed: {0}")]
    Commit(String),
}

type CommitResult = Result<(), String>;

#[derive(Default)]
struct CommitQueue {
    /// Flushes wait for a sync.
    requested: bool,
    /// A commit is due (dirty limit, journal outgrown).
    commit_wanted: bool,
    stopping: bool,
    /// Flushes (and writers out of space) waiting for the next sync or commit.
    waiters: Vec<oneshot::Sender<CommitResult>>,
    /// A commit is between draining the writers and its end.
    running: bool,
    /// Flushes answered by the running commit: nothing changed since it
    /// began, so it makes everything they cover durable.
    riders: Vec<oneshot::Sender<CommitResult>>,
}

pub struct Volume {
    pub(crate) pool: Pool,
    pub(crate) volume_id: u64,
    pub(crate) size_bytes: u64,
    /// The pool's generation (`Pool::generation`) since the last commit or
    /// sync: a mapping whose `txn` equals it was made after both, so no
    /// durable state (commit or journal) refers to its block, which may be
    /// overwritten in place.
    pub(crate) open_gen: AtomicU64,
    pub(crate) gate: Gate,
    /// New data blocks of writes in flight, carried across commits.
    pub(crate) in_flight: InFlightAllocations,
    pub(crate) locks: RangeLocks,
    /// Writes answered before their data landed (see `acked`).
    pub(crate) acked: AckedWrites,
    /// Writes, discards and zeroings since the last sync or commit began.
    pub(crate) changes: AtomicU64,
    /// Data blocks only copy-on-write overwrites may take (RESERVE_BLOCKS_MAX).
    pub(crate) reserve_blocks: u64,
    data_path: PathBuf,
    opts: VolumeOptions,
    queue: Mutex<CommitQueue>,
    wake_committer: Condvar,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Volume {
    /// Formats a pool holding one volume of `size_bytes`.
    pub fn create(
        meta: &Path,
        data: &Path,
        size_bytes: u64,
        mkfs: &MkfsOptions,
    ) -> Result<PoolInfo, VolumeError> {
        check_size(size_bytes)?;
        Pool::mkfs(meta, data, mkfs)?;
        let pool = Pool::open(meta, data, &OpenOptions::default())?;
        Volume::format(&pool, size_bytes)?;
        Ok(pool.info())
    }

    /// Records a volume of `size_bytes` in a freshly made pool and commits:
    /// `create` on storage given directly (tests use `fscore::SimDisk`).
    pub fn format(pool: &Pool, size_bytes: u64) -> Result<(), VolumeError> {
        check_size(size_bytes)?;
        pool.insert(&map::volume_key(VOLUME_ID), &map::encode_volume(size_bytes))?;
        pool.commit()?;
        Ok(())
    }

    /// Opens the pool (locking its files) and starts the commit thread.
    pub fn open(
        meta: &Path,
        data: &Path,
        opts: &VolumeOptions,
    ) -> Result<Arc<Volume>, VolumeError> {
        let pool = Pool::open(meta, data, &pool_options(opts))?;
        Volume::start(pool, opts, JournalDevice::File(data))
    }

    /// `open` on storage given directly (tests use `fscore::SimDisk`; the
    /// front end's `DataIo` must reach the same data device). `data_path`
    /// is empty.
    pub fn open_on(
        meta: Box<dyn fscore::Storage>,
        data: Box<dyn fscore::Storage>,
        opts: &VolumeOptions,
    ) -> Result<Arc<Volume>, VolumeError> {
        let pool = Pool::open_on(meta, data, &pool_options(opts))?;
        Volume::start(pool, opts, JournalDevice::Pool)
    }

    /// Applies the journal (checking its last sync's data on
    /// `journal_device`) and starts the commit thread.
    fn start(
        pool: Pool,
        opts: &VolumeOptions,
        journal_device: JournalDevice,
    ) -> Result<Arc<Volume>, VolumeError> {
        let data_path = journal_device.path().to_path_buf();
        let size_bytes = pool
            .get(&map::volume_key(VOLUME_ID))?
            .and_then(|v| map::decode_volume(&v))
            .ok_or(VolumeError::NoVolume(VOLUME_ID))?;
        apply_journal(&pool, journal_device)?;
        let volume = Arc::new(Volume {
            open_gen: AtomicU64::new(pool.generation()),
            reserve_blocks: RESERVE_BLOCKS_MAX.min(pool.info().data_blocks / 4),
            pool,
            volume_id: VOLUME_ID,
            size_bytes,
            gate: Gate::default(),
            in_flight: InFlightAllocations::default(),
            locks: RangeLocks::default(),
            acked: AckedWrites::default(),
            changes: AtomicU64::new(0),
            data_path,
            opts: opts.clone(),
            queue: Mutex::new(CommitQueue::default()),
            wake_committer: Condvar::new(),
            committer: Mutex::new(None),
        });
        let committer = volume.clone();
        let thread = std::thread::Builder::new()
            .name("volume-commit".into())
            .spawn(move || committer.commit_loop())
            .map_err(fscore::Error::Io)?;
        *volume.committer.lock().unwrap() = Some(thread);
        Ok(volume)
    }

    /// A handle doing data I/O through `io`, for one front-end thread.
    pub fn handle<D: super::DataIo>(self: &Arc<Self>, io: D) -> VolumeHandle<D> {
        VolumeHandle::new(self.clone(), io)
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Path of the data device, for opening a `DataIo` on it.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    pub fn pool_info(&self) -> PoolInfo {
        self.pool.info()
    }

    /// Why the pool stopped writing (reads go on, writes and flushes fail
    /// until it is reopened), or None while it works.
    pub fn failure(&self) -> Option<String> {
        self.pool.failure()
    }

    /// Nodes and items per level of the pool's tree, root level first.
    pub fn tree_shape(&self) -> Result<Vec<fscore::LevelShape>, VolumeError> {
        Ok(self.pool.tree_shape()?)
    }

    /// Blocks of the volume that are written (have a map item).
    pub fn mapped_blocks(&self) -> Result<u64, VolumeError> {
        let mut count = 0u64;
        let start = map::map_key(self.volume_id, 0);
        let end = map::map_key(self.volume_id, u64::MAX);
        self.pool.range_with(&start, &end, &mut |_, _| {
            count += 1;
            true
        })?;
        Ok(count)
    }

    /// Stops the commit thread after a last commit. Handles must be idle.
    pub fn close(&self) -> Result<(), VolumeError> {
        {
            let mut queue = self.queue();
            queue.stopping = true;
        }
        self.wake_committer.notify_all();
        if let Some(thread) = self.committer.lock().unwrap().take() {
            let _ = thread.join();
        }
        self.commit_now(true).map_err(VolumeError::Commit)
    }

    /// Checks a pool that is not in use, including its data space: every
    /// data block free or referenced by exactly one map item.
    pub fn check(meta: &Path, data: &Path) -> Result<CheckReport, VolumeError> {
        Ok(fscore::check_with_data_refs(meta, data, map::data_refs)?)
    }

    /// `check` on storage given directly.
    pub fn check_on(
        meta: Box<dyn fscore::Storage>,
        data: Box<dyn fscore::Storage>,
    ) -> Result<CheckReport, VolumeError> {
        Ok(Pool::check_on(meta, data, Some(&map::data_refs))?)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, CommitQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every change acknowledged before this call durable: asks for a
    /// sync and waits for one that began after this call; with no change
    /// since the last one began, waits for that one only (answered at once
    /// when it has finished).
    pub(crate) async fn sync_and_wait(&self) -> Result<(), TargetError> {
        self.wait_for(false).await
    }

    /// Waits for a commit that began after this call: what a writer out of
    /// space needs (space freed since the last commit is busy until one).
    pub(crate) async fn commit_and_wait(&self) -> Result<(), TargetError> {
        self.wait_for(true).await
    }

    async fn wait_for(&self, commit: bool) -> Result<(), TargetError> {
        let (done, waiting) = oneshot::channel();
        {
            let mut queue = self.queue();
            if queue.stopping {
                return Err(TargetError::Io("volume is closing".into()));
            }
            if queue.waiters.len() + queue.riders.len() >= FLUSH_WAITERS_MAX {
                return Err(TargetError::Io("too many flushes waiting".into()));
            }
            // Every change counts itself before it is acknowledged, and a
            // sync sets `running` before it takes the count (under this
            // lock for `running`). No change since: the last sync, or the
            // running one, holds every acknowledged write.
            if !commit && self.changes.load(Ordering::SeqCst) == 0 {
                if !queue.running {
                    return Ok(());
                }
                queue.riders.push(done);
            } else {
                queue.waiters.push(done);
                queue.requested = true;
                queue.commit_wanted |= commit;
                drop(queue);
                self.wake_committer.notify_all();
            }
        }
        match waiting.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(TargetError::Io(format!("commit failed: {e}"))),
            Err(_) => Err(TargetError::Io("commit thread stopped".into())),
        }
    }

    /// Asks for a commit without waiting (dirty limit reached).
    pub(crate) fn commit_soon(&self) {
        let mut queue = self.queue();
        queue.requested = true;
        queue.commit_wanted = true;
        drop(queue);
        self.wake_committer.notify_all();
    }

    /// Called after each change: commits early past the dirty limit, when
    /// the unsynced journal records no longer fit the journal (or pass
    /// `JOURNAL_PENDING_BYTES_MAX`: memory), and when more data space waits
    /// for a commit (freed by copy-on-write, busy until durable) than is
    /// free: on a nearly full pool that commit turns the busy space free
    /// before writers run out and have to wait for one.
    pub(crate) fn note_change(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        let info = self.pool.info();
        if info.dirty_bytes > self.opts.dirty_bytes_max
            || info.data_busy_blocks > info.data_free_blocks
            || info.journal_pending_bytes > info.journal_free_bytes.min(JOURNAL_PENDING_BYTES_MAX)
        {
            self.commit_soon();
        }
    }

    fn commit_loop(&self) {
        let interval = Duration::from_millis(self.opts.commit_interval_ms);
        let mut last_commit = Instant::now();
        loop {
            let (waiters, full, stopping) = {
                let mut queue = self.queue();
                if !queue.requested && !queue.stopping {
                    let wait = interval.saturating_sub(last_commit.elapsed());
                    queue = self
                        .wake_committer
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                // Commit when asked to, and at least once per interval
                // (it bounds the journal a restart replays).
                let full =
                    queue.commit_wanted || queue.stopping || last_commit.elapsed() >= interval;
                queue.requested = false;
                queue.commit_wanted = false;
                (std::mem::take(&mut queue.waiters), full, queue.stopping)
            };
            let result = self.commit_now(full);
            if full {
                last_commit = Instant::now();
            }
            if let Err(e) = &result {
                log::error!("volume {}: commit failed: {e}", self.volume_id);
            }
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
            if stopping {
                return;
            }
        }
    }

    /// One sync (or commit when `full`): drain the passes (writers between
    /// allocation and registration, or mapping, and in-place writers), end
    /// the journal batch (or the pool's transaction, carrying the in-flight
    /// writes' new blocks) and advance the generation with the gate closed,
    /// then write with the gate open again: writers and readers go on while
    /// it is written (fscore's `begin_sync` / `begin_commit_carrying`).
    fn commit_now(&self, full: bool) -> CommitResult {
        self.gate.close_and_drain();
        self.queue().running = true;
        let result = self.commit_drained(full);
        let riders = {
            let mut queue = self.queue();
            queue.running = false;
            std::mem::take(&mut queue.riders)
        };
        for rider in riders {
            let _ = rider.send(result.clone());
        }
        result
    }

    /// `commit_now` once the writers are drained and `running` is set.
    fn commit_drained(&self, full: bool) -> CommitResult {
        let changed = self.changes.swap(0, Ordering::SeqCst) != 0;
        // Synced changes are durable but not committed (the journal holds
        // them): a commit (at close, on the timer) still has work when
        // nothing changed since the last sync.
        let synced = self.pool.info().journal_used_blocks > 0;
        if !(changed || full && synced) {
            self.gate.reopen();
            return Ok(());
        }
        // Exact: writers change it only under a pass, and none is held now.
        let in_flight = self.in_flight.snapshot();
        let pending = if full {
            self.pool
                .begin_commit_carrying(&in_flight)
                .map(fscore::PendingSync::from)
        } else {
            self.pool.begin_sync(&in_flight)
        };
        // Blocks mapped from now on are in no durable state yet: in place.
        self.open_gen
            .store(self.pool.generation(), Ordering::Release);
        self.gate.reopen();
        let result = pending
            .and_then(|pending| pending.finish())
            .map_err(|e| e.to_string());
        if result.is_err() {
            // Keep the changes pending: every later flush must fail too
            // (the pool is poisoned) rather than report success.
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

/// Where open reads the data the journal's last sync left mapped.
enum JournalDevice<'a> {
    /// The data device file, through the page cache.
    File(&'a Path),
    /// The pool's own handle (storage given directly).
    Pool,
}

impl JournalDevice<'_> {
    /// The data device's path: empty for storage given directly.
    fn path(&self) -> &Path {
        match self {
            JournalDevice::File(path) => path,
            JournalDevice::Pool => Path::new(""),
        }
    }
}

/// Applies what syncs made durable after the last commit (the journal)
/// and commits it, before anything else touches the pool.
fn apply_journal(pool: &Pool, device: JournalDevice) -> Result<(), VolumeError> {
    let found = pool.take_journal();
    if found.records.is_empty() {
        return Ok(());
    }
    let last = &found.records[found.last_sync_from..];
    let whole = match device {
        JournalDevice::File(path) => {
            let file = std::fs::File::open(path).map_err(fscore::Error::Io)?;
            journal::last_sync_is_whole(last, &mut journal::DataFile(file))
        }
        JournalDevice::Pool => journal::last_sync_is_whole(last, &mut journal::PoolData(pool)),
    }
    .map_err(VolumeError::Journal)?;
    let records = if whole {
        &found.records[..]
    } else {
        log::warn!(
            "volume {VOLUME_ID}: the last journal sync ({} records) lacks data that its \
             unfinished flush did not make durable: not applied",
            last.len()
        );
        &found.records[..found.last_sync_from]
    };
    journal::replay(pool, records, pool.generation()).map_err(VolumeError::Journal)?;
    pool.commit().map_err(|cause| VolumeError::Replay {
        records: records.len(),
        cause,
    })?;
    log::info!(
        "volume {VOLUME_ID}: applied {} journal records after the last commit",
        records.len()
    );
    Ok(())
}

fn check_size(size_bytes: u64) -> Result<(), VolumeError> {
    if size_bytes == 0 || !size_bytes.is_multiple_of(BLOCK_BYTES) {
        return Err(VolumeError::BadSize(size_bytes));
    }
    Ok(())
}

fn pool_options(opts: &VolumeOptions) -> OpenOptions {
    OpenOptions {
        cache_bytes: opts.cache_bytes,
        journal_blocks_max: fscore::JOURNAL_BLOCKS_MAX,
    }
}

/// Turns a pool error into the error a front end reports.
pub(crate) fn target_error(e: fscore::Error) -> TargetError {
    match e {
        fscore::Error::NoSpace => TargetError::NoSpace,
        other => TargetError::Io(other.to_string()),
    }
}
