//! Waking a queue thread from other threads.
//!
//! A queue thread sleeps in `io_uring_enter` until a completion arrives. A
//! tag task can also be woken by another thread: the volume's commit thread
//! finishing a flush, or a task of another queue releasing a range lock.
//! Such a wake only marks the task runnable; nothing would end the sleep.
//! So every tag task runs under a waker that, when called from a foreign
//! thread, also writes an eventfd that the queue ring polls: the poll
//! completes, the thread wakes and runs the task.

use io_uring::{opcode, types};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::UblkUringData;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;

/// The eventfd of one queue thread.
pub(crate) struct QueueSignal {
    eventfd: OwnedFd,
    owner: ThreadId,
}

impl QueueSignal {
    /// A signal for the calling (queue) thread.
    pub(crate) fn new() -> std::io::Result<Arc<QueueSignal>> {
        // SAFETY: plain syscall; the descriptor is owned right after.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(QueueSignal {
            // SAFETY: raw is a fresh descriptor nobody else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(raw) },
            owner: std::thread::current().id(),
        }))
    }

    fn notify(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a local buffer to our eventfd. A full
        // counter (EAGAIN) means a wake is already pending: nothing to do.
        unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    fn drain(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer from our eventfd
        // (non-blocking: EAGAIN when already drained).
        unsafe { libc::read(self.eventfd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    }

    /// Runs on the queue thread for as long as the queue lives: a poll on
    /// the eventfd in the queue ring, re-armed after each wake. A poll holds
    /// no buffer, so dropping this task at shutdown is safe.
    pub(crate) async fn listen(self: Arc<Self>) {
        loop {
            let poll =
                opcode::PollAdd::new(types::Fd(self.eventfd.as_raw_fd()), libc::POLLIN as u32)
                    .build();
            match ublk_submit_sqe_async(poll, UblkUringData::Target as u64).await {
                Ok(res) if res >= 0 => self.drain(),
                Ok(res) => {
                    log::error!("ublk: poll on the queue eventfd failed: errno {}", -res);
                    return;
                }
                Err(e) => {
                    log::error!("ublk: poll on the queue eventfd: {e:?}");
                    return;
                }
            }
        }
    }
}

struct SignallingWaker {
    inner: Waker,
    signal: Arc<QueueSignal>,
}

impl Wake for SignallingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.inner.wake_by_ref();
        if std::thread::current().id() != self.signal.owner {
            self.signal.notify();
        }
    }
}

/// `future`, polled with a waker that signals the queue thread when woken
/// from elsewhere.
pub(crate) struct WakeAcrossThreads<F> {
    future: Pin<Box<F>>,
    signal: Arc<QueueSignal>,
}

impl<F: Future> WakeAcrossThreads<F> {
    pub(crate) fn new(future: F, signal: Arc<QueueSignal>) -> WakeAcrossThreads<F> {
        WakeAcrossThreads {
            future: Box::pin(future),
            signal,
        }
    }
}

impl<F: Future> Future for WakeAcrossThreads<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let waker = Waker::from(Arc::new(SignallingWaker {
            inner: cx.waker().clone(),
            signal: self.signal.clone(),
        }));
        self.future.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn eventfd_count(signal: &QueueSignal) -> u64 {
        let mut count = [0u8; 8];
        let n = unsafe { libc::read(signal.eventfd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        if n == 8 {
            u64::from_ne_bytes(count)
        } else {
            0
        }
    }

    #[test]
    fn foreign_wakes_signal_the_eventfd_and_local_ones_do_not() {
        let signal = QueueSignal::new().unwrap();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let outer = Waker::from(counter.clone());
        // A future that hands its waker out, then finishes on the next poll.
        let stash: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
        let s = stash.clone();
        let mut polled = false;
        let future = std::future::poll_fn(move |cx| {
            if polled {
                return Poll::Ready(());
            }
            polled = true;
            *s.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        });
        let mut wrapped = WakeAcrossThreads::new(future, signal.clone());
        let mut cx = Context::from_waker(&outer);
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_pending());
        let inner = stash.lock().unwrap().take().unwrap();

        inner.wake_by_ref();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            eventfd_count(&signal),
            0,
            "a wake on the owner thread needs no signal"
        );

        std::thread::spawn(move || inner.wake()).join().unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert_eq!(
            eventfd_count(&signal),
            1,
            "a foreign wake must signal the queue thread"
        );
        assert!(Pin::new(&mut wrapped).poll(&mut cx).is_ready());
    }
}
