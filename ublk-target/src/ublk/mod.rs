//! The ublk front end: serves any `BlockTarget` as /dev/ublkbN through the
//! kernel's ublk driver (libublk), and manages existing devices.
//!
//! - `request`: decode a request, run it on the target, errno at one edge.
//! - `queue`: one thread per queue, one async task per tag.
//! - `data_io`: data-device I/O through the queue's own io_uring.
//! - `wake`: wakes from other threads reach a queue thread's ring.
//! - `params`: what the kernel is told about the device.
//! - `server`: create or recover a device and serve it (the daemon).
//! - `control`: list, describe and delete devices.
//! - `error`: control-path errors.

mod control;
mod data_io;
mod error;
mod params;
mod queue;
mod request;
mod server;
mod wake;

pub use control::{available, delete, device_ids, device_info, exists, DeviceInfo};
pub use data_io::QueueDataIo;
pub use error::{FrontEndError, FrontEndResult};
pub use params::IO_BUF_BYTES;
pub use server::{
    block_stop_signals, enter_private_mount_namespace, serve, ServeConfig, ServeMode, DEPTH_MAX,
    QUEUES_MAX, TARGET_NAME,
};
