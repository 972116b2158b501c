//! What the NBD and ublk daemons share when `add` forks them: the pipe a
//! daemon reports on, and leaving the caller's session for a log file.

use anyhow::{Context, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

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
