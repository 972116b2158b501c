//! Writes answered before their data is on the device (write-back).
//!
//! A front end may answer a write once the volume has *accepted* it: its
//! blocks are locked, space is allocated (ENOSPC is still that write's
//! answer) and its data is in the request's buffer, queued for the device.
//! The rest (the data write, mapping the blocks) runs on after the answer.
//! NBD's and the kernel's contract allows it: a write is durable only after
//! a FLUSH (or with FUA, which never takes this path), and every flush
//! first waits here for the writes answered before it. A read waits for the
//! range lock an accepted write holds, so it never sees older data than a
//! write already answered.
//!
//! A failure after the answer (the data device's EIO) cannot reach its
//! request any more: it is logged with its volume offset, the blocks keep
//! their old mappings (copy-on-write blocks their old data; a block
//! overwritten in place may be torn and reads EIO, never wrong data), and
//! the next flush returns it, as fsync does after a failed write-back.

use crate::target::{TargetError, TargetResult};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    next: u64,
    /// Sequence numbers of accepted writes not finished yet.
    pending: BTreeSet<u64>,
    /// The first failure of an accepted write since a flush last reported one.
    failure: Option<TargetError>,
}

#[derive(Default)]
pub(crate) struct AckedWrites {
    state: Mutex<State>,
    /// `pending.len()`, read without the lock on every read request.
    pending: AtomicUsize,
    finished: Notify,
}

/// One accepted write; ends (as cancelled, if nobody ended it) when dropped,
/// so a dropped request never leaves a flush waiting.
pub(crate) struct AckedWrite<'a> {
    writes: &'a AckedWrites,
    seq: u64,
    ended: bool,
}

impl AckedWrites {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a write about to be answered.
    pub(crate) fn begin(&self) -> AckedWrite<'_> {
        let mut state = self.state();
        let seq = state.next;
        state.next += 1;
        state.pending.insert(seq);
        self.pending.fetch_add(1, Ordering::SeqCst);
        AckedWrite {
            writes: self,
            seq,
            ended: false,
        }
    }

    /// True while some answered write is still being written.
    pub(crate) fn any_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst) > 0
    }

    fn end(&self, seq: u64, result: TargetResult<()>) {
        {
            let mut state = self.state();
            state.pending.remove(&seq);
            if let Err(e) = result {
                state.failure.get_or_insert(e);
            }
        }
        self.pending.fetch_sub(1, Ordering::SeqCst);
        self.finished.notify_waiters();
    }

    /// Waits for every write answered before this call, then returns the
    /// first failure among answered writes not reported yet (and forgets it).
    pub(crate) async fn settle(&self) -> TargetResult<()> {
        let upto = self.state().next;
        loop {
            let finished = self.finished.notified();
            let mut finished = std::pin::pin!(finished);
            // Registered before the check: an end between the check and the
            // await still wakes us.
            finished.as_mut().enable();
            {
                let mut state = self.state();
                if state.pending.first().is_none_or(|&seq| seq >= upto) {
                    return match state.failure.take() {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
            }
            finished.await;
        }
    }
}

impl AckedWrite<'_> {
    /// The write is done: on the device and mapped, or failed.
    pub(crate) fn end(mut self, result: TargetResult<()>) {
        self.ended = true;
        self.writes.end(self.seq, result);
    }
}

impl Drop for AckedWrite<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.writes.end(
                self.seq,
                Err(TargetError::Io("an answered write was cancelled".into())),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn settle_waits_only_for_writes_answered_before_it_and_reports_a_failure_once() {
        let writes = AckedWrites::default();
        let first = writes.begin();
        let second = writes.begin();
        assert!(writes.any_pending());
        let mut settle = Box::pin(writes.settle());
        assert!(settle.as_mut().now_or_never().is_none());
        let third = writes.begin(); // answered after the flush began
        first.end(Ok(()));
        assert!(
            settle.as_mut().now_or_never().is_none(),
            "second is pending"
        );
        second.end(Err(TargetError::Io("disk".into())));
        let settled = settle.now_or_never().expect("third is not waited for");
        assert_eq!(settled, Err(TargetError::Io("disk".into())));
        assert!(writes.any_pending());
        drop(third); // cancelled: counts as a failure, and ends
        assert!(!writes.any_pending());
        assert!(writes.settle().now_or_never().unwrap().is_err());
        assert_eq!(writes.settle().now_or_never().unwrap(), Ok(()));
    }
}
