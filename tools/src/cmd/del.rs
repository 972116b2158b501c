//! `scoutfs-ublk del -n N | -a`: stops devices. An NBD daemon gets SIGTERM
//! (it finishes in-flight requests and commits) and `del` waits until it
//! has exited, failing with the daemon's reason when its final commit (or
//! its serving) failed, or when it had died of a panic.

use super::registry::{self, Entry};
use crate::cli::DelArgs;
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// How long `del` waits for a daemon to commit and exit: a final commit of
/// a full dirty limit on a slow disk fits well inside.
pub const DEL_WAIT_MS: u64 = 120_000;
/// Poll interval while waiting.
const POLL_MS: u64 = 20;

pub fn run(args: &DelArgs) -> Result<()> {
    if args.all {
        if super::ublk::available() {
            super::ublk::del(None, true)?;
        }
        let mut failures = Vec::new();
        for entry in registry::entries() {
            if let Err(e) = stop(&entry) {
                failures.push(format!("nbd{}: {e:#}", entry.id));
            }
        }
        if !failures.is_empty() {
            bail!("{}", failures.join("; "));
        }
        return Ok(());
    }
    let id = args.dev_id.expect("clap requires -n or -a");
    if super::ublk::owns(id) {
        return super::ublk::del(Some(id), false);
    }
    match registry::get(id) {
        Some(entry) => stop(&entry),
        None => bail!("no device {id} (see `scoutfs-ublk list`)"),
    }
}

fn stop(entry: &Entry) -> Result<()> {
    if !entry.daemon_running() {
        registry::release_id(entry.id);
        // A daemon that panicked recorded why before it aborted.
        if let Some(reason) = registry::take_failure(&registry::nbd_device(entry.id), entry.pid) {
            bail!("{}", registry::failure_message(&reason, &entry.log));
        }
        println!("nbd{}: daemon was not running; entry removed", entry.id);
        return Ok(());
    }
    // SAFETY: sending a signal to a process we checked is our daemon.
    if unsafe { libc::kill(entry.pid as i32, libc::SIGTERM) } != 0 {
        bail!(
            "signalling pid {}: {}",
            entry.pid,
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + Duration::from_millis(DEL_WAIT_MS);
    while registry::alive(entry.pid) {
        if Instant::now() > deadline {
            bail!(
                "daemon pid {} did not exit within {DEL_WAIT_MS} ms; see {}",
                entry.pid,
                entry.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    registry::release_id(entry.id);
    if let Some(reason) = registry::take_failure(&registry::nbd_device(entry.id), entry.pid) {
        bail!("{}", registry::failure_message(&reason, &entry.log));
    }
    println!("nbd{}: stopped", entry.id);
    Ok(())
}
