//! `scoutfs-ublk add`: ublk where the kernel has it and no `--nbd` was
//! given, NBD otherwise.

use crate::cli::AddArgs;
use anyhow::Result;
use std::path::absolute;

pub fn run(args: &AddArgs) -> Result<()> {
    args.pool.require_devices()?;
    let args = &with_absolute_paths(args)?;
    if let Some(warning) = super::host_space::shortfall(&[&args.pool.meta, &args.pool.data]) {
        eprintln!("{warning}");
    }
    if args.nbd.is_none() && super::ublk::available() {
        super::ublk::add(args)
    } else {
        super::nbd_daemon::add(args)
    }
}

/// The pool's paths and a unix socket's, made absolute: the registry
/// (`list`, `recover`) and the URI printed for clients must name the same
/// files from any directory, not relative to where `add` ran.
fn with_absolute_paths(args: &AddArgs) -> Result<AddArgs> {
    let mut args = args.clone();
    args.pool.meta = absolute(&args.pool.meta)?;
    args.pool.data = absolute(&args.pool.data)?;
    let socket = args.nbd.as_deref().and_then(|a| a.strip_prefix("unix:"));
    if let Some(path) = socket.filter(|path| !path.is_empty()) {
        args.nbd = Some(format!("unix:{}", absolute(path)?.display()));
    }
    Ok(args)
}
