//! The registry of running NBD daemons: one JSON file per daemon,
//! `<run dir>/nbd-<id>.json`, written by the daemon once it listens and
//! removed when it exits. `del` and `list` read it. The run directory is
//! `/run/scoutfs-ublk`, or `$SCOUTFS_UBLK_RUN_DIR` (tests use their own).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Daemons one machine may register: a bound on the id search.
pub const NBD_DAEMONS_MAX: u32 = 1024;

pub fn run_dir() -> PathBuf {
    std::env::var_os("SCOUTFS_UBLK_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/scoutfs-ublk"))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub id: u32,
    pub pid: u32,
    pub address: String,
    pub uri: String,
    pub meta: PathBuf,
    pub data: PathBuf,
    pub size_bytes: u64,
    pub log: PathBuf,
    /// The daemon's start time (`/proc/PID/stat`, clock ticks since boot):
    /// with `pid`, names the process even after the pid is reused. Absent
    /// in entries written before it was recorded.
    #[serde(default)]
    pub started: Option<u64>,
}

impl Entry {
    /// The pid is gone, or now names a process started at another time
    /// than the daemon: the entry is stale whatever else is known.
    pub fn pid_gone_or_reused(&self) -> bool {
        !alive(self.pid)
            || self
                .started
                .is_some_and(|started| start_time(self.pid) != Some(started))
    }

    /// Why the daemon failed, if it recorded it: its pool stopped writing
    /// (a running daemon still serves reads), or it panicked (and is gone).
    pub fn failure(&self) -> Option<String> {
        peek_failure(&nbd_device(self.id), self.pid)
    }

    /// Whether the daemon this entry describes is still running: its pid
    /// is the same process (same start time), whatever the binary is
    /// called. Entries without a start time fall back to the command line
    /// naming scoutfs-ublk.
    pub fn daemon_running(&self) -> bool {
        !self.pid_gone_or_reused()
            && (self.started.is_some()
                || std::fs::read(format!("/proc/{}/cmdline", self.pid))
                    .map(|c| String::from_utf8_lossy(&c).contains("scoutfs-ublk"))
                    .unwrap_or(false))
    }
}

fn entry_path(id: u32) -> PathBuf {
    run_dir().join(format!("nbd-{id}.json"))
}

/// Reserves the smallest free id by creating its file exclusively.
pub fn reserve_id(wanted: Option<u32>) -> Result<u32> {
    let dir = run_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let candidates: Box<dyn Iterator<Item = u32>> = match wanted {
        Some(id) => Box::new(std::iter::once(id)),
        None => Box::new(0..NBD_DAEMONS_MAX),
    };
    for id in candidates {
        // `del -n N` and `list -n N` pick a ublk device N first: an NBD
        // daemon never takes the id of an existing ublk device.
        if super::ublk::owns(id) {
            continue;
        }
        let path = entry_path(id);
        if let Some(stale) = read_entry(&path) {
            // (An entry without a start time and a live pid is kept: it may
            // be a daemon of a binary that did not record one.)
            if stale.pid_gone_or_reused() {
                let _ = std::fs::remove_file(&path);
            }
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => return Ok(id),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    match wanted {
        Some(id) => bail!("NBD device {id} is already in use"),
        None => bail!("no free NBD device id below {NBD_DAEMONS_MAX}"),
    }
}

pub fn release_id(id: u32) {
    let _ = std::fs::remove_file(entry_path(id));
}

/// A device's name in the run directory: `nbd-N` or `ublk-N`.
pub fn nbd_device(id: u32) -> String {
    format!("nbd-{id}")
}
pub fn ublk_device(id: u32) -> String {
    format!("ublk-{id}")
}

fn failure_path(device: &str) -> PathBuf {
    run_dir().join(format!("{device}.failed"))
}

/// Records why daemon `pid` (serving `device`) stopped with an error, for
/// the `del` waiting for it: the daemon is not `del`'s child, so its exit
/// status cannot tell. An NBD daemon writes it before releasing its entry.
pub fn record_failure(device: &str, pid: u32, reason: &str) {
    let _ = std::fs::create_dir_all(run_dir());
    let _ = std::fs::write(failure_path(device), format!("{pid}\n{reason}\n"));
}

/// How `list` shows a recorded failure, and what to do: the daemon is
/// still `running` (its pool stopped writing) or it died.
pub fn failure_line(failure: &str, running: bool) -> String {
    if running {
        format!("failed: {failure} (reads only; del, fix the cause, add again)")
    } else {
        format!("died: {failure} (del, then check and add again)")
    }
}

/// What `del` says of a daemon that stopped with an error, and what to do.
pub fn failure_message(reason: &str, log: &Path) -> String {
    format!(
        "the daemon stopped with an error: {reason}; see {}. Writes a completed \
         flush covered are on disk: fix the cause, then `scoutfs-ublk check` and \
         `add` the pool again",
        log.display()
    )
}

/// The failure daemon `pid` recorded for `device`, if any; the record is
/// removed. A record of another pid (an earlier daemon of this device
/// that no `del` waited for) is removed and not reported.
pub fn take_failure(device: &str, pid: u32) -> Option<String> {
    let failure = peek_failure(device, pid);
    let _ = std::fs::remove_file(failure_path(device));
    failure
}

/// The failure daemon `pid` recorded for `device`, if any, left in place
/// (a running daemon's: its pool stopped writing).
pub fn peek_failure(device: &str, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(failure_path(device)).ok()?;
    let (recorded, reason) = text.split_once('\n')?;
    (recorded.parse() == Ok(pid)).then(|| reason.trim_end().to_string())
}

/// Publishes the entry (atomically: write a temporary file, rename).
pub fn publish(entry: &Entry) -> Result<()> {
    let path = entry_path(entry.id);
    let tmp = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(serde_json::to_string_pretty(entry)?.as_bytes())?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// An entry file's contents. An empty file is an id reserved by a daemon
/// still starting (None, quietly); anything else unreadable is reported,
/// so a damaged entry does not just vanish from `list` or `del`.
fn read_entry(path: &Path) -> Option<Entry> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.is_empty() {
        return None;
    }
    match serde_json::from_slice(&bytes) {
        Ok(entry) => Some(entry),
        Err(e) => {
            log::warn!("{}: not a device entry ({e}); ignored", path.display());
            None
        }
    }
}

pub fn get(id: u32) -> Option<Entry> {
    read_entry(&entry_path(id))
}

/// Every published entry, by id.
pub fn entries() -> Vec<Entry> {
    let Ok(dir) = std::fs::read_dir(run_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = dir
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("nbd-") && name.ends_with(".json")
        })
        .filter_map(|e| read_entry(&e.path()))
        .collect();
    out.sort_by_key(|e| e.id);
    out
}

/// Field `n` (1-based, as in proc(5); 3 or later) of `/proc/PID/stat`,
/// counted after the command name, which may hold spaces and parentheses.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n - 3).map(str::to_owned)
}

/// True while the process exists and is not a zombie (a daemon whose
/// parent never reaps it must still count as gone).
pub fn alive(pid: u32) -> bool {
    stat_field(pid, 3).is_some_and(|state| state != "Z" && state != "X")
}

/// The process's start time in clock ticks since boot (field 22).
pub fn start_time(pid: u32) -> Option<u64> {
    stat_field(pid, 22)?.parse().ok()
}
