//! The daemon side: create (or recover) /dev/ublkbN and serve it until the
//! device is stopped by `del`, by a signal, or by the kernel.
//!
//! Devices are created with user recovery (and re-issue of the requests
//! that were in flight), so when the daemon dies the kernel keeps
//! /dev/ublkbN and holds its I/O until `recover` starts a new daemon.
//! What `recover` needs to reopen the pool is stored with the device in
//! libublk's per-device JSON file (`target_data`). The kernel notices a
//! dead daemon within `REQUEST_TIMEOUT_MS` even when it died holding every
//! tag of a queue (see there).

use super::data_io::{QueueDataIo, DATA_FIXED_FILE};
use super::error::{FrontEndError, FrontEndResult};
use super::params::{device_params, IO_BUF_BYTES};
use super::queue::run_queue;
use crate::target::BlockTarget;
use crate::volume::open_data_device;
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::{sys, UblkFlags};
use nix::sys::signal::{SigSet, Signal};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// The name the device's JSON carries as its target type.
pub const TARGET_NAME: &str = "scoutfs";

/// Largest queue depth accepted: the kernel's own limit.
pub const DEPTH_MAX: u16 = sys::UBLK_MAX_QUEUE_DEPTH as u16;
/// Largest number of queues accepted: one thread each, so bound it well
/// below the kernel's limit.
pub const QUEUES_MAX: u16 = 64;

/// Whether to create a new device or take over one whose daemon died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeMode {
    /// A new device, with this id or (None) the next free one.
    Add(Option<u32>),
    /// The existing device with this id, in the QUIESCED state.
    Recover(u32),
}

/// What the daemon serves and how.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub mode: ServeMode,
    pub queues: u16,
    pub depth: u16,
    pub size_bytes: u64,
    /// The data device, registered with every queue ring for `QueueDataIo`.
    pub data_path: Option<PathBuf>,
    /// Stored with the device for `recover` and `list` (pool paths).
    pub target_data: serde_json::Value,
}

/// Makes the daemon's mounts private, so that its own device being mounted
/// or unmounted elsewhere never pins or deadlocks it at exit.
pub fn enter_private_mount_namespace() -> FrontEndResult<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| FrontEndError::sys("unshare(CLONE_NEWNS)", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| FrontEndError::sys("making / private in the daemon's namespace", e))
}

/// Serves the device until it stops; returns its id. `make_target` builds
/// each queue thread's target on that thread, from the queue's `DataIo`;
/// `started` runs once the device is live (the daemon reports to its parent
/// there).
pub fn serve<F, T, S>(config: ServeConfig, make_target: F, started: S) -> FrontEndResult<u32>
where
    F: Fn(u16, QueueDataIo) -> T + Send + Sync + Clone + 'static,
    T: BlockTarget + 'static,
    S: FnOnce(u32) + Send + Sync + 'static,
{
    check_config(&config)?;
    // Before serve's own threads exist, so that they inherit the mask.
    let stop_signals = block_stop_signals()?;

    let (id, dev_flags) = match config.mode {
        ServeMode::Add(id) => (id.map_or(-1, |id| id as i32), UblkFlags::UBLK_DEV_F_ADD_DEV),
        ServeMode::Recover(id) => {
            let old = UblkCtrl::new_simple(id as i32)
                .map_err(|e| FrontEndError::ublk("opening the device", e))?;
            let res = old
                .start_user_recover()
                .map_err(|e| FrontEndError::ublk("START_USER_RECOVERY", e))?;
            if res < 0 {
                return Err(FrontEndError::errno("START_USER_RECOVERY", res));
            }
            (id as i32, UblkFlags::UBLK_DEV_F_RECOVER_DEV)
        }
    };
    let ctrl = UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .id(id)
        .nr_queues(config.queues)
        .depth(config.depth)
        .io_buf_bytes(IO_BUF_BYTES)
        .ctrl_flags((sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE) as u64)
        .dev_flags(dev_flags)
        .build()
        .map_err(|e| FrontEndError::ublk("creating the ublk device", e))?;
    let dev_id = ctrl.dev_info().dev_id;
    spawn_signal_thread(dev_id, stop_signals);

    let data_file = match &config.data_path {
        Some(path) => Some(
            open_data_device(path)
                .map_err(|e| FrontEndError::io(format!("opening {}", path.display()), e))?,
        ),
        None => None,
    };
    let data_fd = data_file.as_ref().map(|f| f.as_raw_fd());
    let target_init = |dev: &mut UblkDev| {
        let depth = dev.dev_info.queue_depth;
        dev.tgt.dev_size = config.size_bytes;
        dev.tgt.params = device_params(config.size_bytes, dev.dev_info.max_io_buf_bytes);
        // Room for every tag's command plus its data I/O in flight.
        dev.tgt.sq_depth = depth.saturating_mul(2).min(DEPTH_MAX);
        dev.tgt.cq_depth = depth.saturating_mul(4).min(DEPTH_MAX * 2);
        if let Some(fd) = data_fd {
            debug_assert_eq!(dev.tgt.nr_fds as u32, DATA_FIXED_FILE);
            dev.tgt.fds[DATA_FIXED_FILE as usize] = fd;
            dev.tgt.nr_fds = DATA_FIXED_FILE as i32 + 1;
        }
        dev.set_target_json(config.target_data.clone());
        Ok(())
    };
    let queue_fn = move |qid: u16, dev: &UblkDev| {
        let target = make_target(qid, QueueDataIo::new());
        run_queue(qid, dev, target);
    };
    let device_fn = move |ctrl: &UblkCtrl| {
        let dev_id = ctrl.dev_info().dev_id;
        shorten_request_timeout(dev_id);
        started(dev_id)
    };
    let result = ctrl.run_target(target_init, queue_fn, device_fn);
    drop(data_file);
    result.map_err(|e| FrontEndError::ublk("serving the device", e))?;
    // The queues are down: the device was stopped (del, a signal) and is
    // deleted here; a recovered device is not deleted by libublk's drop.
    if let Err(e) = ctrl.del_dev() {
        log::debug!("ublk: deleting device {dev_id} after stop: {e:?}");
    }
    Ok(dev_id)
}

/// Block-layer timeout of a request on the device, in milliseconds. For a
/// live daemon the driver only re-arms the timer when it fires (6.12's
/// `ublk_timeout` returns BLK_EH_RESET_TIMER), so it never fails a slow
/// request. It matters when the daemon dies holding every tag of a queue:
/// no uring_cmd is then left for io_uring's cancel path to notice, and only
/// this timeout hands the queue over for recovery. With the kernel's
/// default of 30 s, `recover` waited ~31 s in those cases (the VM's kill -9
/// test, about one run in four); 5 s bounds that wait.
pub const REQUEST_TIMEOUT_MS: u32 = 5_000;

/// Sets `REQUEST_TIMEOUT_MS` on /dev/ublkbN (sysfs `queue/io_timeout`).
/// Failing to is not fatal: only recovery after a crash is slower.
fn shorten_request_timeout(dev_id: u32) {
    let path = format!("/sys/block/ublkb{dev_id}/queue/io_timeout");
    if let Err(e) = std::fs::write(&path, REQUEST_TIMEOUT_MS.to_string()) {
        log::warn!("ublk: setting {path}: {e}; a dead daemon may go unnoticed for 30 s");
    }
}

fn check_config(config: &ServeConfig) -> FrontEndResult<()> {
    if config.queues == 0 || config.queues > QUEUES_MAX {
        return Err(FrontEndError::Invalid(format!(
            "queues must be 1..={QUEUES_MAX}"
        )));
    }
    if config.depth == 0 || config.depth > DEPTH_MAX {
        return Err(FrontEndError::Invalid(format!(
            "depth must be 1..={DEPTH_MAX}"
        )));
    }
    if config.size_bytes == 0 || !config.size_bytes.is_multiple_of(4096) {
        return Err(FrontEndError::Invalid(format!(
            "device size {} is not a positive multiple of 4096",
            config.size_bytes
        )));
    }
    Ok(())
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and returns
/// them. Call it before the daemon starts any thread (the pool's commit
/// thread included): threads inherit the mask, so only `serve`'s signal
/// thread ever takes these signals, instead of one of them killing the
/// daemon with the device left behind.
pub fn block_stop_signals() -> FrontEndResult<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block()
        .map_err(|e| FrontEndError::sys("blocking stop signals", e))?;
    Ok(set)
}

/// SIGTERM / SIGINT / SIGHUP stop the device. libublk's control ring is per
/// thread, so the stop goes through a control handle made on this thread.
fn spawn_signal_thread(dev_id: u32, signals: SigSet) {
    std::thread::spawn(move || {
        let Ok(signal) = signals.wait() else { return };
        eprintln!(
            "scoutfs-ublk daemon {}: {signal:?}, stopping /dev/ublkb{dev_id}",
            std::process::id()
        );
        match UblkCtrl::new_simple(dev_id as i32) {
            Ok(ctrl) => {
                if let Err(e) = ctrl.kill_dev() {
                    eprintln!("scoutfs-ublk: stopping device {dev_id}: {e:?}");
                }
            }
            Err(e) => eprintln!("scoutfs-ublk: control handle for device {dev_id}: {e:?}"),
        }
    });
}
