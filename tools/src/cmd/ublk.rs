//! The ublk side of add, del, list and recover.
//!
//! Placeholder with the contract's functions until the ublk front end
//! (branch `ublk`) lands; on merge, that branch's version replaces this file.

use crate::cli::{AddArgs, RecoverArgs};
use anyhow::{bail, Result};
use std::path::Path;

pub fn available() -> bool {
    Path::new("/dev/ublk-control").exists()
}

pub fn owns(_dev_id: u32) -> bool {
    false
}

pub fn add(_args: &AddArgs) -> Result<()> {
    bail!("ublk support not built yet")
}

pub fn del(_dev_id: Option<u32>, _all: bool) -> Result<()> {
    bail!("ublk support not built yet")
}

pub fn list(_dev_id: Option<u32>, _json: bool) -> Result<()> {
    bail!("ublk support not built yet")
}

pub fn recover(_args: &RecoverArgs) -> Result<()> {
    bail!("ublk support not built yet")
}
