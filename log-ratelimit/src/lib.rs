//! Rate limits for log lines that a client can cause once per request or
//! per connection (a failed request, a refused connection, a corrupted
//! block read in a loop): without them a hostile or broken client fills
//! the disk holding the daemon's log. Like the kernel's printk_ratelimit:
//! at most `BURST` lines per `WINDOW` for each kind of event; the lines
//! past it are counted, and the next line logged says how many.
//!
//! Its own crate so that the daemons that share nothing else (the volume's
//! front ends and lockd) share this.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of one kind logged per window (the kernel's default burst).
pub const BURST: u32 = 10;
/// The window (the kernel's default interval).
pub const WINDOW: Duration = Duration::from_secs(5);

/// One kind of event's limit. Shared by every thread that logs it.
pub struct LogLimit {
    name: &'static str,
    window: Duration,
    burst: u32,
    state: Mutex<State>,
}

struct State {
    /// When the current window opened; None before the first line.
    opened: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(name: &'static str) -> LogLimit {
        LogLimit::with(name, WINDOW, BURST)
    }

    pub const fn with(name: &'static str, window: Duration, burst: u32) -> LogLimit {
        LogLimit {
            name,
            window,
            burst,
            state: Mutex::new(State {
                opened: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// What the lines of this kind are, for the line counting suppressed ones.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Lines logged per window.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether one more line may be logged now: `Some(n)`, n being the
    /// lines suppressed since the last one logged, or None (suppressed).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        // A thread that panicked while logging leaves the counts usable.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.opened
            .is_none_or(|opened| now.saturating_duration_since(opened) >= self.window)
        {
            s.opened = Some(now);
            s.logged = 0;
        }
        if s.logged < self.burst {
            s.logged += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

/// `log::log!` at `level` through the `LogLimit` `limit`: logged while the
/// limit admits it, after a line saying how many were suppressed before.
#[macro_export]
macro_rules! log_limited {
    ($limit:expr, $level:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.admit() {
            if suppressed > 0 {
                $crate::__log::log!(
                    $level,
                    "{}: {} more suppressed (at most {} every {:?})",
                    $limit.name(),
                    suppressed,
                    $limit.burst(),
                    $limit.window()
                );
            }
            $crate::__log::log!($level, $($arg)+);
        }
    };
}

/// For `log_limited!`: the `log` crate as this crate sees it.
#[doc(hidden)]
pub use log as __log;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_of_the_rest() {
        let limit = LogLimit::with("test", Duration::from_secs(5), 3);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(limit.admit_at(at(0)), Some(0));
        assert_eq!(limit.admit_at(at(1)), Some(0));
        assert_eq!(limit.admit_at(at(2)), Some(0));
        for ms in 3..103 {
            assert_eq!(limit.admit_at(at(ms)), None, "line {ms} of the window");
        }
        // The window is counted from its first line, not sliding.
        assert_eq!(limit.admit_at(at(4_999)), None);
        // A new window: the first line carries the count of the suppressed.
        assert_eq!(limit.admit_at(at(5_000)), Some(101));
        assert_eq!(limit.admit_at(at(5_001)), Some(0));
        assert_eq!(limit.admit_at(at(5_002)), Some(0));
        assert_eq!(limit.admit_at(at(5_003)), None);
        // Quiet for longer than a window: nothing carried over but the count.
        assert_eq!(limit.admit_at(at(60_000)), Some(1));
    }

    #[test]
    fn kinds_are_limited_apart() {
        let a = LogLimit::with("a", Duration::from_secs(5), 1);
        let b = LogLimit::with("b", Duration::from_secs(5), 1);
        let now = Instant::now();
        assert_eq!(a.admit_at(now), Some(0));
        assert_eq!(a.admit_at(now), None);
        assert_eq!(b.admit_at(now), Some(0));
    }
}
