//! The ublk side of add, del, list and recover.
//!
//! `add` and `recover` start a daemon (unless `--foreground`): the parent
//! forks, the child leaves the caller's session and mount namespace, opens
//! the pool, creates or recovers /dev/ublkbN and reports the device id back
//! through a pipe once the device is live; the parent prints the device and
//! exits. The daemon's output goes to `DAEMON_LOG`.

use super::daemon::{detach, pipe};
use crate::cli::{AddArgs, RecoverArgs};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ublk_target::ublk::{self as front, ServeConfig, ServeMode};
use ublk_target::volume::{Volume, VolumeError, VolumeOptions};

/// Where daemons write their log (appending; one line per event).
pub const DAEMON_LOG: &str = "/run/scoutfs-ublk/daemon.log";

/// Whether this kernel can serve ublk devices (/dev/ublk-control exists).
pub fn available() -> bool {
    front::available()
}

/// Whether `dev_id` names a ublk device, so del and list dispatch to ublk.
pub fn owns(dev_id: u32) -> bool {
    front::exists(dev_id)
}

/// The pool a device serves, as stored with the device for `recover`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolPaths {
    meta: PathBuf,
    data: PathBuf,
}

impl PoolPaths {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "meta": self.meta.to_string_lossy(),
            "data": self.data.to_string_lossy(),
        })
    }

    fn from_json(value: &serde_json::Value) -> Result<PoolPaths> {
        let path = |key: &str| -> Result<PathBuf> {
            value[key]
                .as_str()
                .map(PathBuf::from)
                .ok_or_else(|| anyhow!("the device's stored target data has no {key:?} path"))
        };
        Ok(PoolPaths {
            meta: path("meta")?,
            data: path("data")?,
        })
    }
}

/// What a daemon is started with.
#[derive(Debug, Clone)]
struct DaemonSpec {
    mode: ServeMode,
    queues: u16,
    depth: u16,
    pool: PoolPaths,
}

/// `scoutfs-ublk add`: serve the pool as /dev/ublkbN.
pub fn add(args: &AddArgs) -> Result<()> {
    let spec = DaemonSpec {
        mode: ServeMode::Add(args.dev_id),
        queues: args.queues,
        depth: args.depth,
        pool: PoolPaths {
            meta: args.pool.meta.clone(),
            data: args.pool.data.clone(),
        },
    };
    if args.foreground {
        return run_daemon(&spec, None);
    }
    let dev_id = start_daemon(&spec)?;
    print!("{}", front::device_info(dev_id)?.ublksrv_text());
    Ok(())
}

/// `scoutfs-ublk recover -n N`: a new daemon for device N, whose daemon died.
pub fn recover(args: &RecoverArgs) -> Result<()> {
    let info = match front::device_info(args.dev_id) {
        Ok(info) => info,
        // Not a ublk device: an NBD export of that id has nothing to
        // recover into (no kernel device waits for a new daemon).
        Err(_) if super::registry::get(args.dev_id).is_some() => bail!(
            "nbd{} is an NBD export, not a ublk device: recover is for /dev/ublkbN; \
             serve the pool again with `scoutfs-ublk add` (a dead daemon's entry is \
             cleared by `del -n {}`)",
            args.dev_id,
            args.dev_id
        ),
        Err(e) => return Err(e.into()),
    };
    if info.state != "QUIESCED" && info.state != "FAIL_IO" {
        bail!(
            "ublk device {} is {}: only a device whose daemon died can be recovered",
            args.dev_id,
            info.state
        );
    }
    let stored = info
        .target_data
        .as_ref()
        .ok_or_else(|| anyhow!("ublk device {} has no stored pool paths", args.dev_id))?;
    let spec = DaemonSpec {
        mode: ServeMode::Recover(args.dev_id),
        queues: info.nr_hw_queues,
        depth: info.queue_depth,
        pool: PoolPaths::from_json(stored)?,
    };
    let dev_id = start_daemon(&spec)?;
    print!("{}", front::device_info(dev_id)?.ublksrv_text());
    Ok(())
}

/// `scoutfs-ublk del -n N | -a`: stop devices, live or with a dead daemon.
pub fn del(dev_id: Option<u32>, all: bool) -> Result<()> {
    let ids = if all {
        front::device_ids()
    } else {
        dev_id.into_iter().collect()
    };
    let mut failures = Vec::new();
    for id in ids {
        let pid = front::device_info(id).ok().as_ref().and_then(daemon_pid);
        if let Err(e) = front::delete(id) {
            failures.push(format!("device {id}: {e}"));
            continue;
        }
        let device = super::registry::ublk_device(id);
        if let Some(reason) = pid.and_then(|pid| super::registry::take_failure(&device, pid)) {
            let message = super::registry::failure_message(&reason, Path::new(DAEMON_LOG));
            failures.push(format!("device {id}: {message}"));
        }
    }
    if !failures.is_empty() {
        bail!("del failed: {}", failures.join("; "));
    }
    Ok(())
}

/// `scoutfs-ublk list [-n N] [--json]`.
fn device_infos(dev_id: Option<u32>) -> Result<Vec<front::DeviceInfo>> {
    let ids = match dev_id {
        Some(id) => vec![id],
        None => front::device_ids(),
    };
    Ok(ids
        .into_iter()
        .map(front::device_info)
        .collect::<Result<Vec<_>, _>>()?)
}

/// The failure the daemon of device `info` recorded, if any: its pool
/// stopped writing (it still serves reads) or it panicked (it is gone).
fn recorded_failure(info: &front::DeviceInfo) -> Option<String> {
    super::registry::peek_failure(
        &super::registry::ublk_device(info.dev_id),
        daemon_pid(info)?,
    )
}

/// The device's daemon pid, if it has one.
fn daemon_pid(info: &front::DeviceInfo) -> Option<u32> {
    u32::try_from(info.daemon_pid).ok().filter(|&pid| pid > 0)
}

/// Prints ublk devices as ublksrv's `ublk list` does, and a failed pool.
pub fn list_text(dev_id: Option<u32>) -> Result<()> {
    for info in device_infos(dev_id)? {
        print!("{}", info.ublksrv_text());
        if let Some(failure) = recorded_failure(&info) {
            let running = daemon_pid(&info).is_some_and(super::registry::alive);
            println!("\t{}", super::registry::failure_line(&failure, running));
        }
    }
    Ok(())
}

/// The ublk devices as JSON objects (`"kind": "ublk"`).
pub fn list_json(dev_id: Option<u32>) -> Result<Vec<serde_json::Value>> {
    Ok(device_infos(dev_id)?
        .iter()
        .map(|info| {
            let mut value = info.to_json();
            value["kind"] = "ublk".into();
            if let Some(failure) = recorded_failure(info) {
                value["failure"] = failure.into();
            }
            value
        })
        .collect())
}

/// Forks the daemon and waits until it reports the live device's id (or
/// exits without doing so).
fn start_daemon(spec: &DaemonSpec) -> Result<u32> {
    let (read_end, write_end) = pipe()?;
    // SAFETY: the command is single-threaded here; the child only runs
    // ordinary Rust code of this process image.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            drop(read_end);
            let status = match detach(Path::new(DAEMON_LOG))
                .and_then(|()| run_daemon(spec, Some(write_end)))
            {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("scoutfs-ublk daemon {}: {e:#}", std::process::id());
                    1
                }
            };
            std::process::exit(status);
        }
        child => {
            drop(write_end);
            match wait_for_report(read_end) {
                Ok(dev_id) => Ok(dev_id),
                Err(e) => {
                    // SAFETY: signalling and reaping our own child.
                    unsafe {
                        libc::kill(child, libc::SIGKILL);
                        libc::waitpid(child, std::ptr::null_mut(), 0);
                    }
                    Err(e.context(format!("the ublk daemon failed to start; see {DAEMON_LOG}")))
                }
            }
        }
    }
}

/// How long `add` / `recover` wait for the daemon to open the pool and bring
/// the device up: opening a large pool after a crash reads its whole tree.
const DAEMON_START_WAIT_MS: i32 = 120_000;

/// Reads the device id the daemon reports once the device is live.
fn wait_for_report(read_end: OwnedFd) -> Result<u32> {
    use std::os::fd::AsRawFd;
    let mut poll_fd = libc::pollfd {
        fd: read_end.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one descriptor we own.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, DAEMON_START_WAIT_MS) };
    if ready < 0 {
        return Err(std::io::Error::last_os_error()).context("waiting for the daemon");
    }
    if ready == 0 {
        bail!("no report within {} s", DAEMON_START_WAIT_MS / 1000);
    }
    let mut report = [0u8; 4];
    std::fs::File::from(read_end)
        .read_exact(&mut report)
        .context("the daemon exited before the device was live")?;
    Ok(u32::from_le_bytes(report))
}

/// The daemon: opens the pool, serves the device until it stops, then
/// closes the pool (committing). `report` receives the device id once live.
fn run_daemon(spec: &DaemonSpec, report: Option<OwnedFd>) -> Result<()> {
    // First, before the pool starts its commit thread.
    front::block_stop_signals()?;
    keep_freed_buffers();
    front::enter_private_mount_namespace()?;
    let started = move |dev_id: u32| {
        eprintln!(
            "scoutfs-ublk daemon {}: serving /dev/ublkb{dev_id}",
            std::process::id()
        );
        if let Some(fd) = report {
            let mut pipe = std::fs::File::from(fd);
            let _ = pipe.write_all(&dev_id.to_le_bytes());
        }
    };
    serve_pool(spec, started)
}

/// Bytes below which malloc serves from its heaps rather than fresh mmaps.
/// Request-sized bounce buffers (up to `IO_BUF_BYTES`) are allocated and
/// freed per request; from a fresh mmap each costs a page fault per 4 KiB,
/// which under emulation dominated large requests.
const MALLOC_MMAP_THRESHOLD_BYTES: i32 = 32 << 20;
/// Free heap top kept rather than returned to the kernel, for the same reason.
const MALLOC_TRIM_THRESHOLD_BYTES: i32 = 256 << 20;

/// Makes malloc reuse freed request buffers instead of unmapping them.
fn keep_freed_buffers() {
    // SAFETY: mallopt only sets allocator parameters; called before threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES);
    }
}

/// How long a new daemon waits for the pool's lock when it is held: a
/// daemon killed just before (kill -9, then `recover` or `add`) releases
/// its files only when the kernel has torn down its io_urings, a moment
/// after the process is gone.
const POOL_BUSY_WAIT: Duration = Duration::from_secs(15);
const POOL_BUSY_POLL: Duration = Duration::from_millis(50);

fn open_volume(meta: &Path, data: &Path) -> Result<Arc<Volume>, VolumeError> {
    let start = Instant::now();
    loop {
        match Volume::open(meta, data, &VolumeOptions::default()) {
            Err(VolumeError::Pool(fscore::Error::InUse)) if start.elapsed() < POOL_BUSY_WAIT => {
                std::thread::sleep(POOL_BUSY_POLL)
            }
            other => return other,
        }
    }
}

/// Opens the pool, serves its volume until the device stops, then closes
/// the pool (a last commit). Each queue thread gets its own volume handle,
/// doing data I/O through that queue's ring.
fn serve_pool(spec: &DaemonSpec, started: impl FnOnce(u32) + Send + Sync + 'static) -> Result<()> {
    super::daemon::abort_on_panic();
    let (meta, data) = (&spec.pool.meta, &spec.pool.data);
    let volume = open_volume(meta, data).with_context(|| {
        format!(
            "opening pool (meta {}, data {})",
            meta.display(),
            data.display()
        )
    })?;
    let config = ServeConfig {
        mode: spec.mode,
        queues: spec.queues,
        depth: spec.depth,
        size_bytes: volume.size_bytes(),
        data_path: Some(data.clone()),
        target_data: spec.pool.to_json(),
    };
    let shared = volume.clone();
    // Once live, failures are recorded under the device's name for `del`.
    let started = move |dev_id: u32| {
        super::daemon::device_known(super::registry::ublk_device(dev_id));
        started(dev_id)
    };
    let watching = super::daemon::watch_for_failure(volume.clone());
    let served = front::serve(config, move |_, data_io| shared.handle(data_io), started);
    drop(watching);
    let closed = volume.close();
    let result = served
        .map_err(anyhow::Error::from)
        .and_then(|_| Ok(closed?));
    if let Err(e) = &result {
        super::daemon::record_failure(&format!("{e:#}"));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_paths_round_trip_through_the_stored_json() {
        let pool = PoolPaths {
            meta: "/mnt/p.meta".into(),
            data: "/mnt/p.data".into(),
        };
        assert_eq!(PoolPaths::from_json(&pool.to_json()).unwrap(), pool);
        assert!(PoolPaths::from_json(&serde_json::json!({"meta": "/x"})).is_err());
    }
}
