//! Control-path operations on existing devices: find, describe, delete.
//!
//! `DeviceInfo::ublksrv_text` prints what ublksrv's `ublk list` prints, with
//! the same fields in the same order, so tools written for ublksrv can parse
//! it.

use super::error::{FrontEndError, FrontEndResult};
use libublk::ctrl::UblkCtrl;
use libublk::sys;
use std::path::Path;
use std::time::{Duration, Instant};

const CONTROL_PATH: &str = "/dev/ublk-control";
const CHAR_CLASS_DIR: &str = "/sys/class/ublk-char";

/// How long `delete` waits for the daemon to commit and exit after the
/// kernel released the device.
const DAEMON_EXIT_WAIT: Duration = Duration::from_secs(60);
const DAEMON_EXIT_POLL: Duration = Duration::from_millis(20);

/// Whether this kernel has the ublk driver loaded.
pub fn available() -> bool {
    Path::new(CONTROL_PATH).exists()
}

/// Whether ublk device `dev_id` exists (live, quiesced or dead).
pub fn exists(dev_id: u32) -> bool {
    Path::new(CHAR_CLASS_DIR)
        .join(format!("ublkc{dev_id}"))
        .exists()
}

/// Ids of every ublk device, in increasing order.
pub fn device_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(CHAR_CLASS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("ublkc")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// What `list` shows about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub dev_id: u32,
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub block_size: u32,
    pub dev_sectors: u64,
    pub max_io_buf_bytes: u32,
    pub daemon_pid: i32,
    pub flags: u64,
    pub state: &'static str,
    pub char_dev: (u32, u32),
    pub block_dev: (u32, u32),
    /// What the daemon stored with the device (pool paths), if any.
    pub target_data: Option<serde_json::Value>,
}

fn state_name(state: u16) -> &'static str {
    match u32::from(state) {
        sys::UBLK_S_DEV_DEAD => "DEAD",
        sys::UBLK_S_DEV_LIVE => "LIVE",
        sys::UBLK_S_DEV_QUIESCED => "QUIESCED",
        sys::UBLK_S_DEV_FAIL_IO => "FAIL_IO",
        _ => "UNKNOWN",
    }
}

fn open(dev_id: u32) -> FrontEndResult<UblkCtrl> {
    if !exists(dev_id) {
        return Err(FrontEndError::Invalid(format!(
            "ublk device {dev_id} does not exist"
        )));
    }
    UblkCtrl::new_simple(dev_id as i32)
        .map_err(|e| FrontEndError::ublk(format!("opening ublk device {dev_id}"), e))
}

/// Reads the kernel's view of device `dev_id` and its stored target data.
pub fn device_info(dev_id: u32) -> FrontEndResult<DeviceInfo> {
    let ctrl = open(dev_id)?;
    let info = ctrl.dev_info();
    let mut params = sys::ublk_params::default();
    // A device that was never started has no parameters yet.
    let have_params = ctrl.get_params(&mut params).is_ok();
    Ok(DeviceInfo {
        dev_id: info.dev_id,
        nr_hw_queues: info.nr_hw_queues,
        queue_depth: info.queue_depth,
        block_size: if have_params {
            1 << params.basic.logical_bs_shift
        } else {
            0
        },
        dev_sectors: params.basic.dev_sectors,
        max_io_buf_bytes: info.max_io_buf_bytes,
        daemon_pid: info.ublksrv_pid,
        flags: info.flags,
        state: state_name(info.state),
        char_dev: (params.devt.char_major, params.devt.char_minor),
        block_dev: (params.devt.disk_major, params.devt.disk_minor),
        target_data: ctrl.get_target_data_from_json(),
    })
}

impl DeviceInfo {
    /// The lines ublksrv's `ublk list` prints for a device, same fields,
    /// same order, plus the stored target data.
    pub fn ublksrv_text(&self) -> String {
        let mut text = format!(
            "dev id {}: nr_hw_queues {} queue_depth {} block size {} dev_capacity {}\n",
            self.dev_id, self.nr_hw_queues, self.queue_depth, self.block_size, self.dev_sectors
        );
        text += &format!(
            "\tmax rq size {} daemon pid {} flags 0x{:x} state {}\n",
            self.max_io_buf_bytes, self.daemon_pid, self.flags, self.state
        );
        text += &format!(
            "\tublkc: {}:{} ublkb: {}:{} owner: 0:0\n",
            self.char_dev.0, self.char_dev.1, self.block_dev.0, self.block_dev.1
        );
        if let Some(data) = &self.target_data {
            text += &format!("\ttarget_data {data}\n");
        }
        text
    }

    /// The same fields as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "dev_id": self.dev_id,
            "nr_hw_queues": self.nr_hw_queues,
            "queue_depth": self.queue_depth,
            "block_size": self.block_size,
            "dev_capacity": self.dev_sectors,
            "size_bytes": self.dev_sectors * 512,
            "max_rq_size": self.max_io_buf_bytes,
            "daemon_pid": self.daemon_pid,
            "flags": self.flags,
            "state": self.state,
            "block_device": format!("/dev/ublkb{}", self.dev_id),
            "target_data": self.target_data,
        })
    }
}

/// Stops and removes device `dev_id`, live or with a dead daemon, and waits
/// until its daemon (if alive) has committed and exited.
pub fn delete(dev_id: u32) -> FrontEndResult<()> {
    let ctrl = open(dev_id)?;
    let daemon_pid = ctrl.dev_info().ublksrv_pid;
    // DEL_DEV stops the disk (failing I/O held for a dead daemon) and returns
    // once the daemon has released /dev/ublkcN.
    ctrl.del_dev()
        .map_err(|e| FrontEndError::ublk(format!("deleting ublk device {dev_id}"), e))?;
    if daemon_pid > 0 && daemon_pid as u32 != std::process::id() {
        wait_for_exit(daemon_pid)?;
    }
    Ok(())
}

/// Waits (bounded) until process `pid` is gone or a zombie.
fn wait_for_exit(pid: i32) -> FrontEndResult<()> {
    let start = Instant::now();
    while process_running(pid) {
        if start.elapsed() > DAEMON_EXIT_WAIT {
            return Err(FrontEndError::Invalid(format!(
                "daemon {pid} still running {}s after its device was deleted",
                DAEMON_EXIT_WAIT.as_secs()
            )));
        }
        std::thread::sleep(DAEMON_EXIT_POLL);
    }
    Ok(())
}

fn process_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_text_matches_ublksrv_field_order() {
        let info = DeviceInfo {
            dev_id: 3,
            nr_hw_queues: 2,
            queue_depth: 64,
            block_size: 512,
            dev_sectors: 2097152,
            max_io_buf_bytes: 524288,
            daemon_pid: 77,
            flags: 0x18,
            state: "LIVE",
            char_dev: (240, 3),
            block_dev: (259, 1),
            target_data: Some(serde_json::json!({"meta": "/m", "data": "/d"})),
        };
        let text = info.ublksrv_text();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("dev id 3: nr_hw_queues 2 queue_depth 64 block size 512 dev_capacity 2097152")
        );
        assert_eq!(
            lines.next(),
            Some("\tmax rq size 524288 daemon pid 77 flags 0x18 state LIVE")
        );
        let json = info.to_json();
        assert_eq!(json["size_bytes"], 2097152u64 * 512);
        assert_eq!(json["state"], "LIVE");
        assert_eq!(json["target_data"]["meta"], "/m");
    }

    #[test]
    fn own_process_is_running_and_a_bogus_pid_is_not() {
        assert!(process_running(std::process::id() as i32));
        assert!(!process_running(i32::MAX));
    }
}
