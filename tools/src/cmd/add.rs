//! `scoutfs-ublk add`: ublk where the kernel has it and no `--nbd` was
//! given, NBD otherwise.

use crate::cli::AddArgs;
use anyhow::Result;

pub fn run(args: &AddArgs) -> Result<()> {
    for path in [&args.pool.meta, &args.pool.data] {
        if !path.exists() {
            anyhow::bail!(
                "{} does not exist (make a pool with `scoutfs-ublk mkfs`)",
                path.display()
            );
        }
    }
    if args.nbd.is_none() && super::ublk::available() {
        super::ublk::add(args)
    } else {
        super::nbd_daemon::add(args)
    }
}
