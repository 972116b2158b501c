//! `DataIo`: how the volume reads and writes the data device. Each front end
//! brings its own implementation so data I/O can share its io_uring (ublk
//! puts it in the queue's ring). Two general ones live here:
//! - `UringDataIo`: an io_uring owned by the current thread, driven by the
//!   tokio `LocalSet` it was created in (the NBD server uses it);
//! - `FileDataIo`: blocking pread/pwrite, for tests and tools that run the
//!   volume under a simple executor.
//!
//! Both open the data device with O_DIRECT (offsets, lengths and buffers
//! must then be 4096-aligned; the volume guarantees it). A file system
//! without O_DIRECT (tmpfs) falls back to buffered I/O with a log line.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

#[allow(async_fn_in_trait)]
pub trait DataIo {
    /// Reads buf.len() bytes at byte `offset` of the data device (O_DIRECT:
    /// offset, length and buffer address are 4096-aligned).
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// fdatasync of the data device.
    async fn sync(&self) -> io::Result<()>;
}

/// Opens the data device for O_DIRECT reads and writes.
pub fn open_data_device(path: &Path) -> io::Result<File> {
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match direct {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            log::warn!(
                "{}: no O_DIRECT on this file system, using buffered I/O",
                path.display()
            );
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
        }
        other => other,
    }
}

/// Blocking pread/pwrite: each call finishes before it returns.
pub struct FileDataIo {
    file: File,
}

impl FileDataIo {
    pub fn open(path: &Path) -> io::Result<FileDataIo> {
        Ok(FileDataIo {
            file: open_data_device(path)?,
        })
    }
}

impl DataIo for FileDataIo {
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    async fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// How long a `UringDataIo` thread keeps polling after a data completion
/// before it sleeps. Measured on ci/bench-nbd's 4k jobs (fio nbd engine,
/// QD32), alternating pairs against no polling: randread 70.0k -> 72.9k,
/// randwrite 69.3k -> 72.8k, randwrite with a flush every 32 writes
/// 48.6k -> 56.8k, higher in each of four pairs per job; 1 ms against
/// 200 us: randread 70.1k -> 73.4k, the write rows alike. The price is a
/// busy CPU while I/O flows, and at most this long after it stops: at
/// queue depth 1 and 1,000 IOPS the thread would poll about a fifth of
/// the time. The daemon's `--poll-us` changes it; zero never polls.
pub const POLL_DEFAULT: Duration = Duration::from_micros(200);

/// How long the reaper keeps polling without a completion while operations
/// are outstanding: a completion that is due soon is not worth a sleep and
/// a wakeup, a device this slow is.
pub const POLL_OUTSTANDING_MAX: Duration = Duration::from_millis(2);

/// Submission queue entries of a `UringDataIo` ring: above the NBD
/// server's in-flight bound, each request having one data op at a time.
pub const URING_ENTRIES: u32 = 256;

enum Slot {
    Waiting(Option<Waker>),
    Done(i32),
}

struct Ring {
    ring: io_uring::IoUring,
    slots: slab::Slab<Slot>,
    /// Operations pushed whose completion has not been reaped yet.
    outstanding: usize,
}

impl Ring {
    /// Moves every completion into its slot and wakes its task; returns
    /// how many there were.
    fn reap(&mut self) -> usize {
        let cq: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let count = cq.len();
        self.outstanding -= count;
        for (key, result) in cq {
            if let Some(slot) = self.slots.get_mut(key as usize) {
                if let Slot::Waiting(Some(waker)) = std::mem::replace(slot, Slot::Done(result)) {
                    waker.wake();
                }
            }
        }
        count
    }
}

struct Shared {
    ring: RefCell<Ring>,
    eventfd: tokio::io::unix::AsyncFd<OwnedFd>,
    /// Entries are queued but not yet submitted.
    unsubmitted: std::cell::Cell<bool>,
    submitter: RefCell<Option<Waker>>,
    /// Polling time after a completion (see `UringDataIo`).
    poll: Duration,
}

/// An io_uring on the current thread, its completions signalled through an
/// eventfd that a local reaper task watches. A read is submitted as it is
/// made (one io_uring_enter each): on the virtual disk measured, reads
/// gathered and submitted together were served slower than the same reads
/// submitted as they came (fio on the raw file, 4k randread QD32: 62k IOPS
/// one by one, 51k in batches of 32; the NBD export's randread went from
/// 57k to 62-64k when it stopped batching). A write is queued and left to
/// the local submitter task, which runs after the other ready tasks of the
/// thread: the writes of the requests parsed in one pass go out in one
/// io_uring_enter (and one block-layer plug: one doorbell), which the NBD
/// thread, CPU-bound under 4k randwrite, measured as 5-10% more IOPS
/// (alternating runs: 62.0-69.2k against 59.4-62.4k). The submitter also
/// retries a submission that failed.
///
/// Completions wake the reaper through the eventfd, but after one the
/// reaper keeps polling the completion queue, yielding to the thread's
/// other tasks between looks, until `poll` passes without a completion
/// and with no operation outstanding (or `POLL_OUTSTANDING_MAX` without a
/// completion while some are); then it sleeps on the eventfd again. While
/// I/O flows the thread never sleeps, so no request waits for it to be
/// woken (in a VM that wakeup is an IPI and a vCPU coming out of halt):
/// `POLL_DEFAULT`. Polling on while reads are at the device, whose answers
/// come in bursts further apart than `poll`, measured 4k randread at QD32
/// +4-8% (nine alternating pairs, all higher; writes alike either way).
/// Must be created inside a tokio `LocalSet`.
pub struct UringDataIo {
    /// Registered with the ring (`DATA_FILE`), which holds a reference of
    /// its own; kept open as long as the ring, like any file it uses.
    _file: File,
    shared: Rc<Shared>,
    reaper: tokio::task::JoinHandle<()>,
    submitter: tokio::task::JoinHandle<()>,
}

impl UringDataIo {
    /// Opens the data device; after a completion the reaper polls while
    /// operations are outstanding and for `poll` after the last completion
    /// (`POLL_DEFAULT`; zero: never polls).
    pub fn open(path: &Path, poll: Duration) -> io::Result<UringDataIo> {
        let file = open_data_device(path)?;
        let ring = new_ring()?;
        // Registered: an operation names the file by index, and the kernel
        // skips looking the descriptor up and counting a reference to it
        // for every operation.
        ring.submitter().register_files(&[file.as_raw_fd()])?;
        // SAFETY: plain syscall; the fd is owned right after.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let shared = Rc::new(Shared {
            ring: RefCell::new(Ring {
                ring,
                slots: slab::Slab::new(),
                outstanding: 0,
            }),
            // SAFETY: the OwnedFd stays open and unchanged inside the AsyncFd.
            unsubmitted: std::cell::Cell::new(false),
            submitter: RefCell::new(None),
            poll,
            eventfd: unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    eventfd,
                    tokio::io::Interest::READABLE,
                )
            }
            .map_err(|e| io::Error::other(e.to_string()))?,
        });
        let reaper = tokio::task::spawn_local(reap_forever(shared.clone()));
        let submitter = tokio::task::spawn_local(submit_forever(shared.clone()));
        Ok(UringDataIo {
            _file: file,
            shared,
            reaper,
            submitter,
        })
    }

    /// Runs one operation and returns its result (bytes moved).
    async fn run(&self, entry: io_uring::squeue::Entry) -> io::Result<usize> {
        self.run_deferred(entry, false).await
    }

    /// `run`, with the submission left to the submitter task when `defer`.
    async fn run_deferred(&self, entry: io_uring::squeue::Entry, defer: bool) -> io::Result<usize> {
        let op = Op {
            shared: &self.shared,
            entry: Some(entry),
            key: None,
            defer,
        };
        let result = op.await;
        if result < 0 {
            Err(io::Error::from_raw_os_error(-result))
        } else {
            Ok(result as usize)
        }
    }
}

impl Drop for UringDataIo {
    fn drop(&mut self) {
        self.reaper.abort();
        self.submitter.abort();
    }
}

/// The data device, registered as the ring's only file.
const DATA_FILE: io_uring::types::Fixed = io_uring::types::Fixed(0);

/// The thread's ring. With COOP_TASKRUN the kernel runs a completion's
/// work (posting its entry, signalling the eventfd) at the thread's next
/// system call, or wakes it if it sleeps, instead of interrupting it with
/// an IPI while it runs: the NBD thread makes system calls all the time, so
/// nothing waits longer, and it is interrupted less. Kernels before 5.19
/// refuse the flag: a plain ring then.
fn new_ring() -> io::Result<io_uring::IoUring> {
    match io_uring::IoUring::builder()
        .setup_coop_taskrun()
        .build(URING_ENTRIES)
    {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => io_uring::IoUring::new(URING_ENTRIES),
        other => other,
    }
}

async fn submit_forever(shared: Rc<Shared>) {
    loop {
        std::future::poll_fn(|cx| {
            if shared.unsubmitted.get() {
                return Poll::Ready(());
            }
            *shared.submitter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        shared.unsubmitted.set(false);
        let submitted = shared.ring.borrow_mut().ring.submit();
        if let Err(e) = submitted {
            // The entries stay queued; the next submission carries them.
            log::warn!("io_uring submit failed: {e}");
            shared.unsubmitted.set(true);
            tokio::task::yield_now().await;
        }
    }
}

async fn reap_forever(shared: Rc<Shared>) {
    loop {
        let Ok(mut ready) = shared.eventfd.readable().await else {
            return;
        };
        let mut count = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer from our eventfd.
        unsafe {
            libc::read(
                shared.eventfd.get_ref().as_raw_fd(),
                count.as_mut_ptr().cast(),
                8,
            )
        };
        ready.clear_ready();
        let reaped = shared.ring.borrow_mut().reap();
        if reaped > 0 && !shared.poll.is_zero() {
            poll_completions(&shared).await;
        }
    }
}

/// Reaps completions without waiting for the eventfd until `shared.poll`
/// passes without one and nothing is outstanding, or `POLL_OUTSTANDING_MAX`
/// passes without one while operations are (a slow or stuck device does
/// not keep the thread spinning). Yields between looks, so the thread's
/// other tasks (and the runtime's socket polling) run in between; any
/// system call they make also runs the ring's completion work
/// (COOP_TASKRUN).
async fn poll_completions(shared: &Shared) {
    let mut last = Instant::now();
    loop {
        tokio::task::yield_now().await;
        let mut ring = shared.ring.borrow_mut();
        if ring.reap() > 0 {
            last = Instant::now();
            continue;
        }
        let limit = if ring.outstanding > 0 {
            POLL_OUTSTANDING_MAX.max(shared.poll)
        } else {
            shared.poll
        };
        if last.elapsed() >= limit {
            return;
        }
    }
}

/// One submitted operation. Dropping it before completion waits for the
/// kernel to finish with the buffer (a dropped request must not let the
/// kernel write into freed memory).
struct Op<'a> {
    shared: &'a Shared,
    entry: Option<io_uring::squeue::Entry>,
    key: Option<usize>,
    defer: bool,
}

impl std::future::Future for Op<'_> {
    type Output = i32;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<i32> {
        let mut ring = self.shared.ring.borrow_mut();
        if let Some(entry) = self.entry.take() {
            let key = ring.slots.insert(Slot::Waiting(Some(cx.waker().clone())));
            let entry = entry.user_data(key as u64);
            // SAFETY: the buffer outlives the op: Drop waits for completion.
            while unsafe { ring.ring.submission().push(&entry) }.is_err() {
                if let Err(e) = ring.ring.submit() {
                    ring.slots.remove(key);
                    return Poll::Ready(-e.raw_os_error().unwrap_or(libc::EIO));
                }
            }
            ring.outstanding += 1;
            if self.defer {
                drop(ring);
                self.key = Some(key);
                if !self.shared.unsubmitted.replace(true) {
                    if let Some(submitter) = self.shared.submitter.borrow_mut().take() {
                        submitter.wake();
                    }
                }
                return Poll::Pending;
            }
            let submitted = ring.ring.submit();
            drop(ring);
            self.key = Some(key);
            if submitted.is_ok() {
                return Poll::Pending;
            }
            // Still queued: the submitter task retries.
            if !self.shared.unsubmitted.replace(true) {
                if let Some(submitter) = self.shared.submitter.borrow_mut().take() {
                    submitter.wake();
                }
            }
            return Poll::Pending;
        }
        let key = self.key.expect("polled after submission");
        match ring.slots.get_mut(key) {
            Some(Slot::Done(result)) => {
                let result = *result;
                ring.slots.remove(key);
                drop(ring);
                self.key = None;
                Poll::Ready(result)
            }
            Some(Slot::Waiting(waker)) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => unreachable!("slot of a pending op"),
        }
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut ring = self.shared.ring.borrow_mut();
        loop {
            if let Some(Slot::Done(_)) = ring.slots.get(key) {
                ring.slots.remove(key);
                return;
            }
            if ring.ring.submit_and_wait(1).is_err() {
                // Cannot wait: leak the slot rather than free a buffer in use.
                log::error!("io_uring wait failed while dropping an op");
                return;
            }
            ring.reap();
        }
    }
}

impl DataIo for UringDataIo {
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let entry =
                io_uring::opcode::Read::new(DATA_FILE, rest.as_mut_ptr(), rest.len() as u32)
                    .offset(offset + done as u64)
                    .build();
            match self.run(entry).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }

    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &buf[done..];
            let entry = io_uring::opcode::Write::new(DATA_FILE, rest.as_ptr(), rest.len() as u32)
                .offset(offset + done as u64)
                .build();
            match self.run_deferred(entry, true).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => done += n,
            }
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        let entry = io_uring::opcode::Fsync::new(DATA_FILE)
            .flags(io_uring::types::FsyncFlags::DATASYNC)
            .build();
        self.run(entry).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aligned::AlignedBuf;

    /// A 1 MiB file in a fresh directory (kept while the TempDir lives)
    /// and a current-thread runtime to drive a ring on it.
    fn scratch_file() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        tokio::runtime::Runtime,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (dir, path, rt)
    }

    #[test]
    fn uring_reads_back_what_it_wrote_with_many_in_flight() {
        let (_dir, path, rt) = scratch_file();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let io = UringDataIo::open(&path, POLL_DEFAULT).unwrap();
            let writes = (0..64u64).map(|i| {
                let io = &io;
                async move {
                    let mut buf = AlignedBuf::zeroed(4096);
                    buf.fill(i as u8 + 1);
                    io.write_at(i * 4096, &buf).await.unwrap();
                }
            });
            futures::future::join_all(writes).await;
            io.sync().await.unwrap();
            let mut buf = AlignedBuf::zeroed(64 * 4096);
            io.read_at(0, &mut buf).await.unwrap();
            for i in 0..64 {
                assert!(buf[i * 4096..(i + 1) * 4096]
                    .iter()
                    .all(|&b| b == i as u8 + 1));
            }
            // Reading past the end of the file is an error, not zeros.
            let mut tail = AlignedBuf::zeroed(8192);
            assert!(io.read_at((1 << 20) - 4096, &mut tail).await.is_err());
        });
    }

    /// The reaper polls after completions and then sleeps on the eventfd
    /// again: an operation started after it has gone back to sleep (and
    /// one started while it polls) must still complete.
    #[test]
    fn completions_are_reaped_after_polling_stops_and_while_it_runs() {
        let (_dir, path, rt) = scratch_file();
        for poll in [Duration::ZERO, Duration::from_millis(2)] {
            tokio::task::LocalSet::new().block_on(&rt, async {
                let io = UringDataIo::open(&path, poll).unwrap();
                let mut buf = AlignedBuf::zeroed(4096);
                for round in 0..4u8 {
                    buf.fill(round + 1);
                    let done = tokio::time::timeout(
                        Duration::from_secs(10),
                        io.write_at(u64::from(round) * 4096, &buf),
                    )
                    .await;
                    assert!(
                        matches!(done, Ok(Ok(()))),
                        "poll {poll:?} round {round}: {done:?}"
                    );
                    // Rounds 0 and 2 start the next operation while the
                    // reaper still polls; 1 and 3 after it stopped.
                    if round % 2 == 1 {
                        tokio::time::sleep(poll * 3 + Duration::from_millis(5)).await;
                    }
                }
                let mut back = AlignedBuf::zeroed(4 * 4096);
                let read =
                    tokio::time::timeout(Duration::from_secs(10), io.read_at(0, &mut back)).await;
                assert!(matches!(read, Ok(Ok(()))), "poll {poll:?}: read {read:?}");
                for round in 0..4usize {
                    assert!(back[round * 4096..(round + 1) * 4096]
                        .iter()
                        .all(|&b| b == round as u8 + 1));
                }
            });
        }
    }

    /// While an operation is outstanding the reaper polls for at most
    /// `POLL_OUTSTANDING_MAX` without a completion, then sleeps on the
    /// eventfd. Operations shorter and longer than that bound must both
    /// complete, and the count of outstanding operations the polling
    /// decision rests on must come back to zero after each (it fails if
    /// submissions or reaps stop counting). Which path reaped an operation
    /// is not observable here.
    #[test]
    fn operations_either_side_of_the_outstanding_poll_bound_complete_and_are_counted() {
        let (_dir, path, rt) = scratch_file();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let io = UringDataIo::open(&path, POLL_DEFAULT).unwrap();
            let fast = POLL_OUTSTANDING_MAX / 4;
            let slow = POLL_OUTSTANDING_MAX * 10;
            for wait in [fast, slow, fast, slow] {
                // A timeout operation: outstanding for `wait`, then -ETIME.
                let spec = io_uring::types::Timespec::from(wait);
                let started = Instant::now();
                let done = tokio::time::timeout(
                    Duration::from_secs(10),
                    io.run(io_uring::opcode::Timeout::new(&spec).build()),
                )
                .await;
                match done {
                    Ok(Err(e)) => assert_eq!(e.raw_os_error(), Some(libc::ETIME), "{wait:?}"),
                    other => panic!("timeout of {wait:?}: {other:?}"),
                }
                assert!(started.elapsed() >= wait);
                assert_eq!(io.shared.ring.borrow().outstanding, 0, "after {wait:?}");
            }
        });
    }
}
