//! What the NBD and ublk daemons share when `add` forks them: the pipe a
//! daemon reports on, leaving the caller's session for a log file,
//! watching the pool for a failure, and dying of a panic with its reason
//! recorded.

use anyhow::{Context, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use ublk_target::volume::Volume;

/// How often a daemon looks whether its pool stopped writing.
const FAILURE_POLL: Duration = Duration::from_secs(1);

/// Watches the pool from a thread until the returned sender is dropped.
/// Once the pool stops writing (a full metadata device, say) and the
/// device is known, records the failure, so `list` shows it while the
/// daemon still serves reads and `del` reports it.
pub fn watch_for_failure(volume: Arc<Volume>) -> std::sync::mpsc::Sender<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let watcher = std::thread::Builder::new()
        .name("failure-watch".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(FAILURE_POLL)
            {
                if let (Some(failure), Some(device)) = (volume.failure(), DEVICE.get()) {
                    log::error!("{device}: the pool stopped writing: {failure}");
                    record_failure(&format!("the pool stopped writing: {failure}"));
                    return;
                }
            }
        });
    if let Err(e) = watcher {
        log::warn!("no failure watcher ({e}): list will not show a failed pool");
    }
    stop
}

/// The name the daemon's device has in the run directory (`nbd-N`,
/// `ublk-N`), once it serves.
static DEVICE: OnceLock<String> = OnceLock::new();

/// Records why this daemon failed, for `del` and `list`, under its
/// device's name. Nothing before the device is known: a daemon that never
/// served told `add` why through its pipe.
pub fn record_failure(reason: &str) {
    if let Some(device) = DEVICE.get() {
        super::registry::record_failure(device, std::process::id(), reason);
    }
}

/// Environment variable: a daemon panics this many milliseconds after it
/// starts serving. A fault injection for tests of what a panic leaves.
pub const INJECT_PANIC_ENV: &str = "SCOUTFS_UBLK_INJECT_PANIC_MS";

/// Makes a panic on any of the daemon's threads end the daemon, with its
/// reason recorded for `del` and `list` (under the device's name once
/// `device_known` gave it). Unwinding would let the other threads go on
/// serving with whatever state the panic left half-changed; an abort is a
/// crash, which the pool's journal makes safe: what a completed flush
/// covered is on disk. The default hook still prints the message (and a
/// backtrace if asked) to the daemon's log first.
pub fn abort_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // One line: `list` and `del` print it.
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let reason = format!(
            "the daemon panicked (thread {}{location}): {}",
            thread.name().unwrap_or("unnamed"),
            panic_message(info.payload())
        );
        record_failure(&reason);
        print(info);
        std::process::abort();
    }));
}

/// A panic's message: `panic!` carries a `&str` or a `String`.
/// (`PanicHookInfo::payload_as_str` does this from Rust 1.91 only.)
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    match payload.downcast_ref::<&str>() {
        Some(text) => text,
        None => payload
            .downcast_ref::<String>()
            .map_or("a non-text panic", String::as_str),
    }
}

/// Names the daemon's device (`nbd-N`, `ublk-N`) for a panic's record,
/// and starts the panic `INJECT_PANIC_ENV` asks for, if any.
pub fn device_known(device: String) {
    let _ = DEVICE.set(device);
    let Some(ms) = std::env::var(INJECT_PANIC_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    log::warn!("{INJECT_PANIC_ENV}={ms}: this daemon will panic in {ms} ms");
    let _ = std::thread::Builder::new()
        .name("inject-panic".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            panic!("injected by {INJECT_PANIC_ENV}");
        });
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Leaves the caller's session and terminal: a new session, stdin from
/// /dev/null, stdout and stderr appended to `log` (its directory made if
/// missing).
pub fn detach(log: &Path) -> Result<()> {
    // SAFETY: plain system calls on our own process.
    if unsafe { libc::setsid() } < 0 {
        return Err(std::io::Error::last_os_error()).context("setsid");
    }
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    // SAFETY: dup2 onto this process's standard descriptors.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(log_file.as_raw_fd(), 1);
        libc::dup2(log_file.as_raw_fd(), 2);
    }
    Ok(())
}
