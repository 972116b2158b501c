//! ublk-target: the volume engine and the front ends that serve it.
//!
//! Module map:
//! - `target`: the contract between front ends and what they serve
//!   (`BlockTarget`), the errors that become an errno at the edge
//!   (`TargetError`), and `MemTarget`, an in-memory target for front-end
//!   tests.
//! - `ublk`: the ublk front end (/dev/ublkbN through libublk).

pub mod target;
pub mod ublk;

pub use target::{BlockTarget, MemTarget, TargetError};
