//! `scoutfs-ublk add`: ublk where the kernel has it and no `--nbd` was
//! given, NBD otherwise.

use crate::cli::AddArgs;
use anyhow::Result;

pub fn run(args: &AddArgs) -> Result<()> {
    args.pool.require_devices()?;
    if args.nbd.is_none() && super::ublk::available() {
        super::ublk::add(args)
    } else {
        super::nbd_daemon::add(args)
    }
}
