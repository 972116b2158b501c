//! The transaction gate. A sync or commit closes the gate, waits for the
//! passes to drain, ends the journal batch or the transaction, advances
//! the generation, and reopens it. Writers (writes, discards,
//! write-zeroes) hold a shared pass while they allocate and register new
//! blocks as in flight, and again while they map them, log the change (or
//! free them); a write that overwrites blocks of the open generation in
//! place holds its pass across its data I/O too, since no sync or commit
//! may cover a block half written. So every commit sees an exact set of
//! blocks allocated but not yet mapped (which it carries into the next
//! transaction: `InFlightAllocations`), and a block's "mapped in the open
//! generation" status cannot change under a writer that is overwriting it
//! in place. Readers never touch the gate.
//!
//! Passes are shared: writers never wait for each other here, only for a
//! sync or commit; and neither waits for copy-on-write data I/O.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    writers: u64,
    closed: bool,
    waiting: Vec<Waker>,
}

#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    drained: Condvar,
}

pub struct Pass<'a> {
    gate: &'a Gate,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while a commit is running, then enters.
    pub fn enter(&self) -> impl Future<Output = Pass<'_>> {
        Enter { gate: self }
    }

    /// Closes the gate and blocks (the commit thread) until every pass is
    /// dropped. `reopen` must follow.
    pub fn close_and_drain(&self) {
        let mut state = self.lock();
        state.closed = true;
        while state.writers > 0 {
            state = self.drained.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn reopen(&self) {
        let waiting = {
            let mut state = self.lock();
            state.closed = false;
            std::mem::take(&mut state.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }
}

struct Enter<'a> {
    gate: &'a Gate,
}

impl<'a> Future for Enter<'a> {
    type Output = Pass<'a>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Pass<'a>> {
        let mut state = self.gate.lock();
        if state.closed {
            state.waiting.push(cx.waker().clone());
            return Poll::Pending;
        }
        state.writers += 1;
        Poll::Ready(Pass { gate: self.gate })
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.writers -= 1;
        if state.writers == 0 && state.closed {
            self.gate.drained.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn commit_waits_for_passes_and_writers_wait_for_commit() {
        let gate = Arc::new(Gate::default());
        let pass = futures::executor::block_on(gate.enter());
        let g = gate.clone();
        let committer = std::thread::spawn(move || {
            g.close_and_drain();
            g.reopen();
        });
        // The commit cannot finish while the pass is held.
        while !gate.lock().closed {
            std::thread::yield_now();
        }
        assert!(!committer.is_finished());
        let mut entering = Box::pin(gate.enter());
        let waker = futures::task::noop_waker();
        assert!(entering
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(pass);
        committer.join().unwrap();
        assert!(entering
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
    }
}
