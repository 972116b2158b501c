//! Block range locks: a writer locks the virtual blocks it changes for the
//! whole read-modify-write (two 512-byte writes into one 4 KiB block must
//! not lose each other's bytes). Held ranges are disjoint, kept in an
//! ordered map by first block, so finding an overlap is O(log n).
//! Acquisition is all-or-nothing, so there is no lock-order deadlock.
//! Readers do not lock; they ask `is_locked` to tell a racing writer from
//! corruption when a checksum does not match.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

struct Held {
    last: u64,
    /// Order of acquisition (`RangeLocks::taken`).
    seq: u64,
    waiting: Vec<Waker>,
}

#[derive(Default)]
struct Locked {
    /// Held ranges by first block.
    ranges: BTreeMap<u64, Held>,
    /// Locks taken so far: the next one's `seq`.
    taken: u64,
}

#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<Locked>,
}

pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    first: u64,
}

impl RangeLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, Locked> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks blocks `first..=last`, waiting for overlapping holders.
    pub fn lock(&self, first: u64, last: u64) -> impl Future<Output = RangeGuard<'_>> {
        assert!(first <= last);
        LockRange {
            locks: self,
            first,
            last,
        }
    }

    /// True if any block of `first..=last` is locked right now.
    pub fn is_locked(&self, first: u64, last: u64) -> bool {
        overlap(&self.map().ranges, first, last).is_some()
    }

    /// Waits until every lock that overlaps `first..=last` now has been
    /// released (without taking one); locks taken after the call are not
    /// waited for, so new writers can neither starve the wait, however
    /// large the range, nor be blocked by it.
    pub async fn wait_for_holders(&self, first: u64, last: u64) {
        // A lock is either held now with a smaller seq, or taken later
        // with a larger one.
        let before = self.map().taken;
        std::future::poll_fn(|cx| {
            let mut map = self.map();
            // Disjoint ranges by first block: walk back from the last one
            // starting in the range until one ends before it.
            for (_, held) in map.ranges.range_mut(..=last).rev() {
                if held.last < first {
                    break;
                }
                if held.seq < before {
                    held.waiting.push(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            Poll::Ready(())
        })
        .await
    }
}

/// The held range overlapping `first..=last`, if any: among disjoint
/// ranges, only the one starting last at or before `last` can.
fn overlap(map: &BTreeMap<u64, Held>, first: u64, last: u64) -> Option<u64> {
    let (&start, held) = map.range(..=last).next_back()?;
    (held.last >= first).then_some(start)
}

struct LockRange<'a> {
    locks: &'a RangeLocks,
    first: u64,
    last: u64,
}

impl<'a> Future for LockRange<'a> {
    type Output = RangeGuard<'a>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RangeGuard<'a>> {
        let mut map = self.locks.map();
        match overlap(&map.ranges, self.first, self.last) {
            Some(start) => {
                map.ranges
                    .get_mut(&start)
                    .expect("overlap found it")
                    .waiting
                    .push(cx.waker().clone());
                Poll::Pending
            }
            None => {
                let seq = map.taken;
                map.taken += 1;
                map.ranges.insert(
                    self.first,
                    Held {
                        last: self.last,
                        seq,
                        waiting: Vec::new(),
                    },
                );
                Poll::Ready(RangeGuard {
                    locks: self.locks,
                    first: self.first,
                })
            }
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let held = self.locks.map().ranges.remove(&self.first);
        if let Some(held) = held {
            held.waiting.into_iter().for_each(Waker::wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ranges_exclude_each_other_and_disjoint_ones_do_not() {
        let locks = RangeLocks::default();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let a = futures::executor::block_on(locks.lock(10, 19));
        let b = futures::executor::block_on(locks.lock(20, 20));
        assert!(locks.is_locked(19, 19) && locks.is_locked(0, 10) && locks.is_locked(20, 30));
        assert!(!locks.is_locked(0, 9) && !locks.is_locked(21, 100));
        let mut c = Box::pin(locks.lock(5, 12));
        assert!(c.as_mut().poll(&mut cx).is_pending());
        let mut d = Box::pin(locks.lock(15, 25));
        assert!(d.as_mut().poll(&mut cx).is_pending());
        drop(a);
        let c = match c.as_mut().poll(&mut cx) {
            Poll::Ready(g) => g,
            Poll::Pending => panic!("5..=12 is free after 10..=19 is released"),
        };
        assert!(d.as_mut().poll(&mut cx).is_pending(), "20 is still held");
        drop(b);
        assert!(d.as_mut().poll(&mut cx).is_ready());
        drop(c);
    }

    #[test]
    fn waiting_for_holders_ignores_locks_taken_after_the_call() {
        let locks = RangeLocks::default();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let a = futures::executor::block_on(locks.lock(10, 10));
        let b = futures::executor::block_on(locks.lock(500, 500));
        let outside = futures::executor::block_on(locks.lock(2000, 2000));
        let mut wait = Box::pin(locks.wait_for_holders(0, 1000));
        assert!(
            wait.as_mut().poll(&mut cx).is_pending(),
            "a and b hold blocks in range"
        );
        drop(a);
        // A writer arriving now: not waited for.
        let later = futures::executor::block_on(locks.lock(20, 20));
        assert!(
            wait.as_mut().poll(&mut cx).is_pending(),
            "b still holds 500"
        );
        drop(b);
        assert!(
            wait.as_mut().poll(&mut cx).is_ready(),
            "only the later lock is left"
        );
        drop((later, outside));
        // Nothing held: ready at once.
        assert!(Box::pin(locks.wait_for_holders(0, u64::MAX))
            .as_mut()
            .poll(&mut cx)
            .is_ready());
    }
}
