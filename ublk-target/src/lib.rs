//! ublk-target: the volume engine and the front ends that serve it.
//!
//! Module map:
//! - `target`: the contract between front ends and what they serve
//!   (`BlockTarget`), the errors that become an errno at the edge
//!   (`TargetError`), and `MemTarget`, an in-memory target for front-end
//!   tests.
//! - `aligned`: `AlignedBuf`, 4096-aligned buffers for O_DIRECT.
//! - `nbd`: the NBD front end (handshake, transmission, listener).
//! - `volume`: the volume engine (map in fscore's btree, copy-on-write data,
//!   checksums, commits) and `DataIo`, how it reaches the data device.
//! - `ublk`: the ublk front end (/dev/ublkbN through libublk).

pub mod aligned;
pub mod nbd;
pub mod target;
pub mod ublk;
pub mod volume;

#[cfg(test)]
mod test_support;

pub use aligned::AlignedBuf;
pub use target::{BlockTarget, MemTarget, TargetError};
pub use volume::{DataIo, Volume, VolumeHandle};
