//! `scoutfs-ublk list [-n N] [--json]`: ublk devices (where the kernel has
//! ublk) and NBD daemons.

use super::registry;
use super::size::human;
use crate::cli::ListArgs;
use anyhow::{bail, Result};
use std::path::Path;

/// With `--json`, one JSON array holds every device, ublk and NBD alike,
/// each object with a `kind`.
pub fn run(args: &ListArgs) -> Result<()> {
    let ublk_id = match args.dev_id {
        Some(id) if super::ublk::owns(id) => Some(Some(id)),
        Some(_) => None,
        None if super::ublk::available() => Some(None),
        None => None,
    };
    let mut list = Vec::new();
    if let Some(dev_id) = ublk_id {
        if args.json {
            list = super::ublk::list_json(dev_id)?;
        } else {
            super::ublk::list_text(dev_id)?;
        }
        if dev_id.is_some() {
            return print_json(args.json, &list);
        }
    }
    let entries: Vec<_> = registry::entries()
        .into_iter()
        .filter(|e| args.dev_id.is_none_or(|id| id == e.id))
        .collect();
    if let (Some(id), true) = (args.dev_id, entries.is_empty()) {
        bail!("no device {id}");
    }
    if args.json {
        list.extend(entries.iter().map(|e| {
            let mut v = serde_json::to_value(e).expect("entry serializes");
            v["kind"] = "nbd".into();
            v["state"] = state(e).into();
            if let Some(failure) = e.failure() {
                v["failure"] = failure.into();
            }
            v
        }));
        return print_json(true, &list);
    }
    for e in entries {
        println!(
            "nbd{}: {} {} pid {} uri {} meta {} data {}",
            e.id,
            state(&e),
            human(e.size_bytes),
            e.pid,
            e.uri,
            e.meta.display(),
            e.data.display()
        );
        if let Some(failure) = e.failure() {
            println!("  {}", registry::failure_line(&failure, e.daemon_running()));
        }
    }
    Ok(())
}

/// LIVE, FAILED (running, its pool no longer writes) or DEAD.
fn state(entry: &registry::Entry) -> &'static str {
    if !entry.daemon_running() {
        "DEAD"
    } else if entry.failure().is_some() {
        "FAILED"
    } else {
        "LIVE"
    }
}

fn print_json(json: bool, list: &[serde_json::Value]) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
    }
    Ok(())
}

/// The device serving the pool whose metadata device is `meta`, and how
/// to stop it: what a user told "the pool is in use" wants to know next.
pub fn serving(meta: &Path) -> Option<String> {
    if let Some(e) = registry::entries()
        .into_iter()
        .find(|e| same_file(meta, &e.meta))
    {
        return Some(format!(
            "nbd{} (daemon pid {}; `scoutfs-ublk del -n {}` stops it)",
            e.id, e.pid, e.id
        ));
    }
    if !super::ublk::available() {
        return None;
    }
    super::ublk::list_json(None)
        .ok()?
        .iter()
        .find_map(|device| {
            let served = device["target_data"]["meta"].as_str()?;
            let id = device["dev_id"].as_u64()?;
            same_file(meta, Path::new(served)).then(|| {
                format!(
                    "/dev/ublkb{id} (daemon pid {}; `scoutfs-ublk del -n {id}` stops it)",
                    device["daemon_pid"]
                )
            })
        })
}

/// The same file or device, whichever path names it.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) if a.file_type().is_block_device() && b.file_type().is_block_device() => {
            a.rdev() == b.rdev()
        }
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
