//! Write coalescing: data writes that land on adjacent data blocks become
//! one I/O.
//!
//! Requests in flight on one front-end thread allocate their copy-on-write
//! blocks one after another, so on a pool with free space, concurrent writes
//! of unrelated volume blocks usually go to consecutive data blocks. Each
//! was one I/O (a system call's share, the file system's direct-I/O path, a
//! device doorbell). Here a write first registers itself and yields once,
//! so the other requests that are ready run and register theirs; the first
//! to resume takes every registered write that extends its own contiguous
//! run, copies them into one buffer, issues one write and hands each taken
//! write its result. A write with no neighbour goes out as is, uncopied.
//!
//! Safety of borrowing the other writes' buffers: a registered write is
//! suspended inside its own `write_at` (its buffer borrowed for that long),
//! the copy happens without any await in between, and a write dropped
//! before being taken unregisters itself. Single-threaded by construction
//! (`Rc`, `RefCell`), like the `DataIo`s it wraps.

use super::data_io::DataIo;
use crate::aligned::AlignedBuf;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Largest merged write; larger single writes are not merged at all.
pub const MERGED_BYTES_MAX: usize = 1 << 20;

type Outcome = Result<(), (io::ErrorKind, String)>;

#[derive(Default)]
struct Done {
    outcome: RefCell<Option<Outcome>>,
    waker: RefCell<Option<Waker>>,
}

struct Registered {
    ptr: *const u8,
    len: usize,
    done: Rc<Done>,
}

pub struct CoalescingWrites<D> {
    inner: D,
    /// Writes waiting to be issued, by (byte offset, registration number).
    registered: RefCell<BTreeMap<(u64, u64), Registered>>,
    next_number: Cell<u64>,
}

/// Unregisters a write whose future is dropped before anyone took it.
struct Registration<'a, D> {
    owner: &'a CoalescingWrites<D>,
    key: (u64, u64),
}

impl<D> Drop for Registration<'_, D> {
    fn drop(&mut self) {
        self.owner.registered.borrow_mut().remove(&self.key);
    }
}

/// Returns Pending once (after asking to be polled again): lets the tasks
/// that are ready run first, on any executor.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<D: DataIo> CoalescingWrites<D> {
    pub fn new(inner: D) -> CoalescingWrites<D> {
        CoalescingWrites {
            inner,
            registered: RefCell::new(BTreeMap::new()),
            next_number: Cell::new(0),
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Removes `key` and every registered write contiguous with it on either
    /// side (up to `MERGED_BYTES_MAX` in all); returns them in offset order.
    fn take_run(&self, key: (u64, u64)) -> Vec<((u64, u64), Registered)> {
        let mut registered = self.registered.borrow_mut();
        let mine = registered.remove(&key).expect("taken by its owner");
        let mut total = mine.len;
        let mut run = std::collections::VecDeque::from([(key, mine)]);
        // Takes the write at `k`, if any, when it still fits the run.
        let mut take = |registered: &mut BTreeMap<(u64, u64), Registered>,
                        k: Option<(u64, u64)>| {
            let k = k?;
            if total + registered[&k].len > MERGED_BYTES_MAX {
                return None;
            }
            let w = registered.remove(&k).expect("present");
            total += w.len;
            Some((k, w))
        };
        loop {
            let start = run.front().expect("run").0 .0;
            let before = registered
                .range(..(start, 0))
                .next_back()
                .filter(|((offset, _), w)| offset + w.len as u64 == start)
                .map(|(k, _)| *k);
            match take(&mut registered, before) {
                Some(taken) => run.push_front(taken),
                None => break,
            }
        }
        loop {
            let (last_key, last) = run.back().expect("run");
            let end = last_key.0 + last.len as u64;
            let after = registered
                .range((end, 0)..(end + 1, 0))
                .next()
                .map(|(k, _)| *k);
            match take(&mut registered, after) {
                Some(taken) => run.push_back(taken),
                None => break,
            }
        }
        run.into()
    }
}

impl<D: DataIo> DataIo for CoalescingWrites<D> {
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.inner.sync().await
    }

    async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if buf.len() >= MERGED_BYTES_MAX {
            return self.inner.write_at(offset, buf).await;
        }
        let number = self.next_number.get();
        self.next_number.set(number + 1);
        let key = (offset, number);
        let done = Rc::new(Done::default());
        self.registered.borrow_mut().insert(
            key,
            Registered {
                ptr: buf.as_ptr(),
                len: buf.len(),
                done: done.clone(),
            },
        );
        let registration = Registration { owner: self, key };
        YieldOnce(false).await;
        let still_mine = self.registered.borrow().contains_key(&key);
        std::mem::forget(registration);
        if !still_mine {
            // Another write took this one into its run: wait for its result.
            let outcome = std::future::poll_fn(|cx| match done.outcome.borrow_mut().take() {
                Some(outcome) => Poll::Ready(outcome),
                None => {
                    *done.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            return outcome.map_err(|(kind, message)| io::Error::new(kind, message));
        }
        let run = self.take_run(key);
        if run.len() == 1 {
            return self.inner.write_at(offset, buf).await;
        }
        let start = run[0].0 .0;
        let total: usize = run.iter().map(|(_, w)| w.len).sum();
        let mut merged = AlignedBuf::reuse(total);
        let mut at = 0;
        for (_, w) in &run {
            // SAFETY: each taken write is suspended in its own `write_at`,
            // which borrows its buffer (ptr, len) until it gets its outcome.
            let bytes = unsafe { std::slice::from_raw_parts(w.ptr, w.len) };
            merged[at..at + w.len].copy_from_slice(bytes);
            at += w.len;
        }
        let mut others = Others(
            run.into_iter()
                .filter(|(k, _)| *k != key)
                .map(|(_, w)| w.done)
                .collect(),
        );
        let result = self.inner.write_at(start, &merged[..total]).await;
        others.deliver(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err((e.kind(), e.to_string())),
        });
        result
    }
}

/// The writes a merged write carries for other requests. Each gets the
/// merged write's outcome, or an error if the write is dropped unfinished
/// (they must never wait forever).
struct Others(Vec<Rc<Done>>);

impl Others {
    fn deliver(&mut self, outcome: Outcome) {
        for done in self.0.drain(..) {
            *done.outcome.borrow_mut() = Some(outcome.clone());
            if let Some(waker) = done.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

impl Drop for Others {
    fn drop(&mut self) {
        self.deliver(Err((
            io::ErrorKind::Interrupted,
            "the merged write carrying this one was cancelled".into(),
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write it is asked to make; fails writes at `fail_at`.
    #[derive(Default)]
    struct Recorder {
        writes: RefCell<Vec<(u64, Vec<u8>)>>,
        fail_at: Option<u64>,
    }

    impl DataIo for Recorder {
        async fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        async fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
            self.writes.borrow_mut().push((offset, buf.to_vec()));
            YieldOnce(false).await; // a write takes time
            match self.fail_at {
                Some(at) if at >= offset && at < offset + buf.len() as u64 => {
                    Err(io::Error::other("injected"))
                }
                _ => Ok(()),
            }
        }
        async fn sync(&self) -> io::Result<()> {
            Ok(())
        }
    }

    fn block(fill: u8) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(4096);
        b.fill(fill);
        b
    }

    fn run_concurrently(io: &CoalescingWrites<Recorder>, offsets: &[u64]) -> Vec<io::Result<()>> {
        let bufs: Vec<AlignedBuf> = (0..offsets.len()).map(|i| block(i as u8 + 1)).collect();
        let writes = offsets
            .iter()
            .zip(&bufs)
            .map(|(&offset, buf)| io.write_at(offset, buf));
        futures::executor::block_on(futures::future::join_all(writes))
    }

    #[test]
    fn adjacent_concurrent_writes_become_one_write_with_every_byte() {
        let io = CoalescingWrites::new(Recorder::default());
        let results = run_concurrently(&io, &[8192, 0, 4096, 40960]);
        assert!(results.iter().all(|r| r.is_ok()));
        let writes = io.inner().writes.borrow();
        assert_eq!(writes.len(), 2, "one merged run and one single write");
        let merged = writes.iter().find(|(o, _)| *o == 0).expect("run at 0");
        assert_eq!(merged.1.len(), 3 * 4096);
        // Block at 0 came from the second request (fill 2), 4096 from the third...
        assert!(merged.1[..4096].iter().all(|&b| b == 2));
        assert!(merged.1[4096..8192].iter().all(|&b| b == 3));
        assert!(merged.1[8192..].iter().all(|&b| b == 1));
        let single = writes.iter().find(|(o, _)| *o == 40960).expect("single");
        assert!(single.1.iter().all(|&b| b == 4));
        assert!(io.registered.borrow().is_empty());
    }

    #[test]
    fn a_failed_merged_write_fails_every_request_in_it() {
        let io = CoalescingWrites::new(Recorder {
            fail_at: Some(4096),
            ..Recorder::default()
        });
        let results = run_concurrently(&io, &[0, 4096, 8192, 65536]);
        let failed: Vec<bool> = results.iter().map(|r| r.is_err()).collect();
        assert_eq!(failed, [true, true, true, false]);
    }

    #[test]
    fn a_dropped_write_is_never_issued() {
        let io = CoalescingWrites::new(Recorder::default());
        let buf = block(9);
        let mut dropped = Box::pin(io.write_at(4096, &buf));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(dropped.as_mut().poll(&mut cx).is_pending());
        drop(dropped);
        assert!(io.registered.borrow().is_empty());
        let results = run_concurrently(&io, &[0, 8192]);
        assert!(results.iter().all(|r| r.is_ok()));
        let writes = io.inner().writes.borrow();
        assert_eq!(writes.len(), 2, "no run through the dropped block");
    }
}
