//! `scoutfs-ublk check`: fsck of a pool not in use, data space included.

use crate::cli::PoolArgs;
use anyhow::{bail, Context, Result};
use ublk_target::volume::Volume;

pub fn run(args: &PoolArgs) -> Result<()> {
    args.require_devices()?;
    let report = Volume::check(&args.meta, &args.data).with_context(|| {
        format!(
            "checking pool (meta {}, data {})",
            args.meta.display(),
            args.data.display()
        )
    })?;
    // The superblocks' area of the metadata device is neither: the sums
    // here are of the blocks the allocators manage.
    println!(
        "seq {}: {} items, metadata blocks {} used {} free, data blocks {} used {} journal {} free",
        report.seq,
        report.items,
        report.meta_blocks_referenced,
        report.meta_blocks_free,
        report.data_blocks_referenced,
        report.data_blocks_journal,
        report.data_blocks_free
    );
    if report.journal_records > 0 {
        // The check is of the last commit; the journal holds what flushes
        // made durable after it, applied by the next `add` (or `dump`).
        println!(
            "journal: {} records synced after commit {} (applied at the next open)",
            report.journal_records, report.seq
        );
    }
    for p in &report.problems {
        println!("problem: {:?} block {}: {}", p.device, p.block, p.what);
    }
    if !report.is_clean() {
        bail!("{} problems found", report.problems.len());
    }
    println!("clean");
    Ok(())
}
