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
    waiting: Vec<Waker>,
}

#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<BTreeMap<u64, Held>>,
}

pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    first: u64,
}

impl RangeLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Held>> {
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
        overlap(&self.map(), first, last).is_some()
    }

    /// Waits until no lock overlaps `first..=last` (without taking one).
    pub async fn wait_unlocked(&self, first: u64, last: u64) {
        drop(self.lock(first, last).await);
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
        match overlap(&map, self.first, self.last) {
            Some(start) => {
                map.get_mut(&start)
                    .expect("overlap found it")
                    .waiting
                    .push(cx.waker().clone());
                Poll::Pending
            }
            None => {
                map.insert(
                    self.first,
                    Held {
                        last: self.last,
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
        let held = self.locks.map().remove(&self.first);
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
}
