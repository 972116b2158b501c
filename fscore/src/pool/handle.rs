//! `Pool`: the public handle. One open transaction behind a mutex; every
//! method takes `&self`.

use super::journal::JournalReplay;
use super::options::{MkfsOptions, OpenOptions, PoolInfo};
use super::state::PoolState;
use crate::alloc::Extent;
use crate::btree::node::VALUE_LEN_MAX;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::storage::{FileStorage, Storage, DIRECT_ALIGN_BYTES};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// After a successful `insert` or `delete`, this many `free_data` calls are
/// sure not to fail with NoSpace (they only grow the free-space list), so a
/// caller can replace a mapping and free what it pointed at.
pub const FREES_AFTER_CHANGE_MIN: usize = 16;

/// Largest value `Pool::insert` accepts with metadata blocks of 4 KiB or
/// more (`Pool::value_len_max` gives the limit of a pool).
pub const POOL_VALUE_LEN_MAX: usize = VALUE_LEN_MAX;

pub struct Pool {
    state: Mutex<PoolState>,
    /// Held from the start to the end of a commit: one at a time.
    committing: Mutex<()>,
    data_path: PathBuf,
}

/// A commit whose transaction has ended (changes made from now on belong to
/// the next one) and whose writes have not been made yet: `finish` makes
/// them without holding the pool's lock, so other threads go on using the
/// pool meanwhile. Dropping it unfinished poisons the pool (the commit's
/// outcome on disk would be unknown).
pub struct PendingCommit<'a> {
    pool: &'a Pool,
    job: Option<super::commit::CommitJob>,
    io: super::commit::CommitIo,
    _one_at_a_time: MutexGuard<'a, ()>,
}

/// Below this many freed extents, merging them into the free space costs
/// less than a thread to overlap the merge with a commit's writes; they are
/// then merged by `end_commit` as before.
const OVERLAPPED_ABSORB_EXTENTS_MIN: usize = 256;

impl PendingCommit<'_> {
    /// Writes the commit and makes it durable (see docs/format.md).
    ///
    /// While a writer thread waits for the device, this thread merges the
    /// space earlier commits freed into the allocators' free space (at 10M
    /// items, thousands of scattered blocks per commit: ~10% of an insert's
    /// CPU, formerly spent after the commit's own flushes).
    pub fn finish(mut self) -> Result<()> {
        let job = self.job.take().expect("finished once");
        let io = &self.io;
        let pool = self.pool;
        let written = if pool.lock().freed_extents() < OVERLAPPED_ABSORB_EXTENTS_MIN {
            io.write(&job)
        } else {
            std::thread::scope(|scope| {
                let writer = std::thread::Builder::new()
                    .name("fscore-commit".into())
                    .spawn_scoped(scope, || io.write(&job));
                pool.lock().absorb_freed();
                match writer {
                    Ok(writer) => writer.join().unwrap_or_else(|_| {
                        Err(Error::Io(std::io::Error::other("commit writer panicked")))
                    }),
                    // No thread to be had: write from this one.
                    Err(_) => io.write(&job),
                }
            })
        };
        pool.lock().end_commit(job, written)
    }
}

/// A sync begun by `Pool::begin_sync`: the journal blocks to write, or,
/// when the journal had no room, a commit. Dropping it unfinished poisons
/// the pool.
pub struct PendingSync<'a> {
    kind: SyncKind<'a>,
}

enum SyncKind<'a> {
    Journal(JournalWrite<'a>),
    // Boxed: a commit's job is large, and syncs are the common case.
    Commit(Box<PendingCommit<'a>>),
}

/// The journal blocks of a sync, written by `PendingSync::finish`.
struct JournalWrite<'a> {
    pool: &'a Pool,
    blocks: Option<Vec<(u64, Vec<u8>)>>,
    io: super::commit::CommitIo,
    _one_at_a_time: MutexGuard<'a, ()>,
}

impl<'a> From<PendingCommit<'a>> for PendingSync<'a> {
    fn from(commit: PendingCommit<'a>) -> PendingSync<'a> {
        PendingSync {
            kind: SyncKind::Commit(Box::new(commit)),
        }
    }
}

impl PendingSync<'_> {
    /// Whether this sync is a commit (the journal had no room).
    pub fn is_commit(&self) -> bool {
        matches!(self.kind, SyncKind::Commit(_))
    }

    /// Makes the records durable: the journal blocks written, then one
    /// flush of the data device (or the commit's writes).
    pub fn finish(self) -> Result<()> {
        match self.kind {
            SyncKind::Commit(commit) => commit.finish(),
            SyncKind::Journal(mut write) => {
                let blocks = write.blocks.take().expect("finished once");
                let written = write.io.write_journal(&blocks);
                if let Err(e) = &written {
                    write.pool.lock().store.poison(e);
                }
                written
            }
        }
    }
}

impl Drop for JournalWrite<'_> {
    fn drop(&mut self) {
        if self.blocks.is_some() {
            self.pool
                .lock()
                .store
                .poison(&"a journal write was dropped unfinished");
        }
    }
}

impl Drop for PendingCommit<'_> {
    fn drop(&mut self) {
        if self.job.is_some() {
            self.pool
                .lock()
                .store
                .poison(&"a commit was dropped unfinished");
        }
    }
}

/// Opens a pool's two devices, each with an exclusive flock (kept while its
/// storage lives): a second opener gets `Error::InUse`. Refuses what
/// `Pool::validate_devices` refuses first.
pub(crate) fn open_devices(
    meta: &Path,
    data: &Path,
    writable: bool,
) -> Result<(FileStorage, FileStorage)> {
    Pool::validate_devices(meta, data)?;
    Ok((open_locked(meta, writable)?, open_locked(data, writable)?))
}

fn open_locked(path: &Path, writable: bool) -> Result<FileStorage> {
    let storage = FileStorage::open(path, writable)?;
    // SAFETY: flock on a file descriptor we own.
    let locked = unsafe { libc::flock(storage.file().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::InUse);
        }
        return Err(error.into());
    }
    Ok(storage)
}

/// Refuses to format devices that hold a pool (the metadata device's
/// superblock) or a pool's data (the data device's label) unless
/// `opts.overwrite`: the same mistake as mkfs over a mounted file system's
/// device, and as silent.
fn refuse_existing_pool(
    meta: &mut dyn Storage,
    data: &mut dyn Storage,
    opts: &MkfsOptions,
) -> Result<()> {
    if opts.overwrite {
        return Ok(());
    }
    if let Some(pool) = super::superblock::existing_pool(meta)? {
        return Err(Error::PoolExists(format!(
            "the metadata device already holds {pool}"
        )));
    }
    // A label that does not even decode is still a pool's.
    match super::label::read_label(data) {
        Ok(None) => Ok(()),
        Ok(Some(label)) => Err(Error::PoolExists(format!(
            "the data device already holds the data of pool {:#018x}",
            label.pool_id
        ))),
        Err(Error::BadFormat(what)) => Err(Error::PoolExists(format!(
            "the data device already holds a pool's data ({what})"
        ))),
        Err(e) => Err(e),
    }
}

/// Creates a sparse file of `len_bytes` where none exists and grows a
/// regular file that is smaller.
fn prepare_file(path: &Path, len_bytes: u64) -> Result<()> {
    let prepare = || -> std::io::Result<()> {
        FileStorage::create_sparse(path, len_bytes)?;
        let metadata = std::fs::metadata(path)?;
        if metadata.is_file() && metadata.len() < len_bytes {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(len_bytes)?;
        }
        Ok(())
    };
    prepare().map_err(|e| Error::io_at(path, e))
}

impl Pool {
    /// Refuses, naming the paths, what cannot be a pool's device: anything
    /// but a regular file or a block device (a directory opens, but fails
    /// only at the first read, and its size is not a size), and one file or
    /// block device given as both (its second flock would fail as if
    /// another process held the pool). Paths that do not exist pass: mkfs
    /// creates them, and opening one fails on it.
    pub fn validate_devices(meta: &Path, data: &Path) -> Result<()> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let identity = |path: &Path| -> Result<Option<(u64, u64, u64)>> {
            let stat = match std::fs::metadata(path) {
                Ok(stat) => stat,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io_at(path, e)),
            };
            let kind = stat.file_type();
            if !kind.is_file() && !kind.is_block_device() {
                return Err(Error::Invalid(format!(
                    "{}: not a regular file or a block device",
                    path.display()
                )));
            }
            Ok(Some((stat.dev(), stat.ino(), stat.rdev())))
        };
        let (Some(meta_id), Some(data_id)) = (identity(meta)?, identity(data)?) else {
            return Ok(());
        };
        // Two device nodes of one block device share rdev, not the inode.
        if meta_id == data_id || (meta_id.2 != 0 && meta_id.2 == data_id.2) {
            return Err(Error::Invalid(format!(
                "{} and {} are the same device: a pool needs two",
                meta.display(),
                data.display()
            )));
        }
        Ok(())
    }

    /// Formats. Files that don't exist are created sparse at the given sizes.
    pub fn mkfs(meta: &Path, data: &Path, opts: &MkfsOptions) -> Result<PoolInfo> {
        Pool::validate_devices(meta, data)?;
        prepare_file(meta, opts.meta_bytes)?;
        prepare_file(data, opts.data_bytes)?;
        // Validated above, before the files were created or grown.
        let mut meta_storage = open_locked(meta, true)?;
        let mut data_storage = open_locked(data, true)?;
        if meta_storage.is_direct() && (opts.meta_block_bytes as usize) < DIRECT_ALIGN_BYTES {
            let bytes = opts.meta_block_bytes;
            return Err(Error::Invalid(format!(
                "{bytes}-byte metadata blocks on an O_DIRECT device (need {DIRECT_ALIGN_BYTES})"
            )));
        }
        refuse_existing_pool(&mut meta_storage, &mut data_storage, opts)?;
        if opts.preallocate {
            // Under the locks and after the checks above: a pool in use, a
            // pool not to be overwritten, or options refused, leave the
            // files untouched.
            meta_storage.write_zeros()?;
            data_storage.write_zeros()?;
        }
        Ok(PoolState::mkfs(Box::new(meta_storage), Box::new(data_storage), opts)?.info())
    }

    /// Formats pool storage given directly (tests use `SimDisk`).
    pub fn mkfs_on(
        mut meta: Box<dyn Storage>,
        mut data: Box<dyn Storage>,
        opts: &MkfsOptions,
    ) -> Result<PoolInfo> {
        refuse_existing_pool(meta.as_mut(), data.as_mut(), opts)?;
        Ok(PoolState::mkfs(meta, data, opts)?.info())
    }

    /// Opens, recovering the newest valid superblock. Takes an exclusive
    /// flock on both files.
    pub fn open(meta: &Path, data: &Path, opts: &OpenOptions) -> Result<Pool> {
        let (meta_storage, data_storage) = open_devices(meta, data, true)?;
        // Commits write through their own handle (the flock above covers
        // the file), so a read of an uncached block never waits for them.
        let meta_writer = FileStorage::open(meta, true)?;
        let mut state = PoolState::open(Box::new(meta_storage), Box::new(data_storage), opts)?;
        state.use_meta_writer(Box::new(meta_writer));
        Ok(Pool {
            state: Mutex::new(state),
            committing: Mutex::new(()),
            data_path: data.to_path_buf(),
        })
    }

    /// Opens pool storage given directly; `data_path` is empty.
    pub fn open_on(
        meta: Box<dyn Storage>,
        data: Box<dyn Storage>,
        opts: &OpenOptions,
    ) -> Result<Pool> {
        let state = PoolState::open(meta, data, opts)?;
        Ok(Pool {
            state: Mutex::new(state),
            committing: Mutex::new(()),
            data_path: PathBuf::new(),
        })
    }

    /// Reads bytes of the data device through the pool's own handle on it,
    /// for a caller whose pool is on storage given directly (`open_on`).
    pub fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let data = self.lock().data.clone();
        let read = crate::block::store::lock_storage(&data).read_at(offset, buf);
        read.map_err(Error::Io)
    }

    /// Held by a commit or sync from its beginning to its end: one at a time.
    fn one_at_a_time(&self) -> MutexGuard<'_, ()> {
        self.committing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock cannot leave a half-written disk
        // (commits poison on error), so a poisoned mutex is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Largest value `insert` accepts in this pool.
    pub fn value_len_max(&self) -> usize {
        self.lock().value_len_max
    }

    pub fn info(&self) -> PoolInfo {
        self.lock().info()
    }

    /// Why the pool stopped writing (a failed write, flush or commit: it is
    /// poisoned until reopened), or None while it works.
    pub fn failure(&self) -> Option<String> {
        self.lock().store.poisoned().map(str::to_owned)
    }

    /// Nodes and items per level of the tree, root level first (reads the
    /// internal nodes only).
    pub fn tree_shape(&self) -> Result<Vec<crate::tree::LevelShape>> {
        let state = &mut *self.lock();
        state.tree.shape(&mut state.store)
    }

    /// The seq the open transaction will commit as (`info().seq + 1`, or
    /// `+ 2` while a begun commit is being written).
    pub fn txn_seq(&self) -> u64 {
        self.lock().store.txn_seq
    }

    /// Path of the data device (empty for storage given to `open_on`).
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    pub fn get(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let mut value = None;
        self.get_with(key, &mut |bytes| value = Some(bytes.to_vec()))?;
        Ok(value)
    }

    /// Calls `found` with the value of `key`, if present, without copying.
    pub fn get_with(&self, key: &Key, found: &mut dyn FnMut(&[u8])) -> Result<()> {
        let state = &mut *self.lock();
        state.tree.with_value(&mut state.store, key, found)
    }

    /// Inserts or replaces. Values are at most `POOL_VALUE_LEN_MAX` bytes.
    pub fn insert(&self, key: &Key, value: &[u8]) -> Result<()> {
        if value.len() > POOL_VALUE_LEN_MAX {
            return Err(Error::Invalid(format!(
                "value of {} bytes (max {POOL_VALUE_LEN_MAX})",
                value.len()
            )));
        }
        let state = &mut *self.lock();
        state.ensure_meta_room(state.tree.op_blocks_max(), FREES_AFTER_CHANGE_MIN + 1)?;
        state.tree.insert(&mut state.store, key, value)
    }

    /// Deletes; returns whether the key was present.
    pub fn delete(&self, key: &Key) -> Result<bool> {
        let state = &mut *self.lock();
        state.ensure_meta_room(state.tree.op_blocks_max(), FREES_AFTER_CHANGE_MIN + 1)?;
        state.tree.delete(&mut state.store, key)
    }

    /// Items with `start <= key <= end` in ascending order, at most `limit`.
    pub fn range(&self, start: &Key, end: &Key, limit: usize) -> Result<Vec<(Key, Vec<u8>)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.range_with(start, end, &mut |key, value| {
            out.push((*key, value.to_vec()));
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Items with `start <= key <= end` in descending order, at most `limit`.
    pub fn range_rev(&self, start: &Key, end: &Key, limit: usize) -> Result<Vec<(Key, Vec<u8>)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let state = &mut *self.lock();
        state
            .tree
            .scan_backward(&mut state.store, start, end, &mut |key, value| {
                out.push((*key, value.to_vec()));
                out.len() < limit
            })?;
        Ok(out)
    }

    /// Visits items with `start <= key <= end` in ascending order until
    /// `visit` returns false (no copies).
    pub fn range_with(
        &self,
        start: &Key,
        end: &Key,
        visit: &mut dyn FnMut(&Key, &[u8]) -> bool,
    ) -> Result<()> {
        let state = &mut *self.lock();
        state.tree.scan_forward(&mut state.store, start, end, visit)
    }

    /// Allocates between 1 and `blocks` contiguous data blocks. Never a busy
    /// block; `Error::NoSpace` when nothing is free (commit, then retry, if
    /// `info().data_busy_blocks` is not zero).
    pub fn alloc_data(&self, blocks: u64) -> Result<Extent> {
        let state = &mut *self.lock();
        state.store.check_writable()?;
        state.data_alloc.alloc(blocks)
    }

    /// Frees data blocks; they stay busy until the freeing commit is durable.
    pub fn free_data(&self, extent: Extent) -> Result<()> {
        let state = &mut *self.lock();
        state.ensure_meta_room(0, 1)?;
        state.data_alloc.free(extent)
    }

    /// Makes everything done before the call durable (see docs/format.md).
    pub fn commit(&self) -> Result<()> {
        self.begin_commit()?.finish()
    }

    /// Ends the open transaction and returns the commit that makes it
    /// durable when finished. Changes made after this call, from any
    /// thread, belong to the next transaction. Waits for a commit begun
    /// earlier to finish.
    pub fn begin_commit(&self) -> Result<PendingCommit<'_>> {
        self.begin_commit_carrying(&[])
    }

    /// `begin_commit` for a caller with data allocations in flight: data
    /// extents it allocated (in the open transaction, or carried into it by
    /// an earlier call) that nothing references yet, because the data being
    /// written into them has not landed. The commit persists them as free,
    /// so a crash leaks nothing, and they stay allocated in the next
    /// transaction, whose commit persists them as allocated once the caller
    /// references them (or frees them). So a commit need not wait for
    /// writes in flight (docs/format.md, "Commit").
    pub fn begin_commit_carrying(&self, in_flight: &[Extent]) -> Result<PendingCommit<'_>> {
        let one_at_a_time = self.one_at_a_time();
        let state = &mut *self.lock();
        let job = state.begin_commit(in_flight)?;
        Ok(PendingCommit {
            pool: self,
            job: Some(job),
            io: state.commit_io(),
            _one_at_a_time: one_at_a_time,
        })
    }

    /// Adds a record to the journal of the open transaction (at most
    /// `JOURNAL_RECORD_BYTES_MAX` bytes): durable at the next sync or
    /// commit, returned by `take_journal` after a crash before the next
    /// commit. See `journal` for what a caller that logs must do.
    pub fn log(&self, record: &[u8]) -> Result<()> {
        let state = &mut *self.lock();
        state.store.check_writable()?;
        state.journal.log(record)
    }

    /// Like `begin_commit_carrying`, but when the journal has room for the
    /// records logged since the last sync, only those are written: the
    /// open transaction goes on. Everything the caller changed since the
    /// last commit must be described by logged records.
    pub fn begin_sync(&self, in_flight: &[Extent]) -> Result<PendingSync<'_>> {
        let one_at_a_time = self.one_at_a_time();
        let state = &mut *self.lock();
        state.store.check_writable()?;
        let (pool_id, seq) = (state.sb.pool_id, state.store.txn_seq);
        // With nothing logged since the last sync, only the data device is
        // flushed (the caller's data writes are made durable all the same).
        let blocks = if state.journal.has_pending() {
            state.journal.encode_sync(pool_id, seq)
        } else {
            Some(Vec::new())
        };
        let kind = match blocks {
            Some(blocks) => SyncKind::Journal(JournalWrite {
                pool: self,
                blocks: Some(blocks),
                io: state.commit_io(),
                _one_at_a_time: one_at_a_time,
            }),
            // No room in the region: a commit covers the records instead.
            None => SyncKind::Commit(Box::new(PendingCommit {
                pool: self,
                job: Some(state.begin_commit(in_flight)?),
                io: state.commit_io(),
                _one_at_a_time: one_at_a_time,
            })),
        };
        Ok(PendingSync { kind })
    }

    /// The records found in the journal at open (once; empty after): the
    /// caller applies them again, in order, before its first commit (the
    /// last sync's only if the data it points at is intact, see
    /// `JournalReplay`).
    pub fn take_journal(&self) -> JournalReplay {
        self.lock().journal.replay.take().unwrap_or_default()
    }

    /// `(txn seq << 20) + syncs in the open transaction` (a region holds
    /// fewer than 2^20 syncs): grows with every commit and sync, and is
    /// greater than the generation of any change the last commit holds. A
    /// caller tags what it changes with it to tell what no durable state
    /// refers to yet. (After a crash it can repeat values of changes that
    /// were never committed; those are in no durable state.)
    pub fn generation(&self) -> u64 {
        let state = self.lock();
        state.store.txn_seq << 20 | state.journal.syncs
    }

    /// Allocates exactly `extent`, which must be free: how a caller applies
    /// again a journal record that referenced newly allocated data.
    pub fn claim_data(&self, extent: Extent) -> Result<()> {
        let state = &mut *self.lock();
        state.store.check_writable()?;
        state.data_alloc.claim(extent)
    }

    /// Checks the in-memory state of this handle (the open transaction
    /// included): tree invariants and allocator indexes. For tests.
    pub fn verify(&self) -> Result<()> {
        let state = &mut *self.lock();
        super::check::verify_live(state)
    }
}

// The volume engine shares one Pool between threads.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
};
