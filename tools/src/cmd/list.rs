//! `scoutfs-ublk list [-n N] [--json]`: ublk devices (where the kernel has
//! ublk) and NBD daemons.

use super::registry;
use super::size::human;
use crate::cli::ListArgs;
use anyhow::{bail, Result};

pub fn run(args: &ListArgs) -> Result<()> {
    if let Some(id) = args.dev_id {
        if super::ublk::owns(id) {
            return super::ublk::list(Some(id), args.json);
        }
    } else if super::ublk::available() {
        super::ublk::list(None, args.json)?;
    }
    let entries: Vec<_> = registry::entries()
        .into_iter()
        .filter(|e| args.dev_id.is_none_or(|id| id == e.id))
        .collect();
    if let (Some(id), true) = (args.dev_id, entries.is_empty()) {
        bail!("no device {id}");
    }
    if args.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).expect("entry serializes");
                v["kind"] = "nbd".into();
                v["state"] = state(e.pid).into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for e in entries {
        println!(
            "nbd{}: {} {} pid {} uri {} meta {} data {}",
            e.id,
            state(e.pid),
            human(e.size_bytes),
            e.pid,
            e.uri,
            e.meta.display(),
            e.data.display()
        );
    }
    Ok(())
}

fn state(pid: u32) -> &'static str {
    if registry::alive(pid) {
        "LIVE"
    } else {
        "DEAD"
    }
}
