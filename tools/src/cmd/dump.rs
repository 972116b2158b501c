//! `scoutfs-ublk dump`: the superblock's view of a pool, its tree's shape,
//! and space usage of both devices. Opening the pool applies its journal
//! (what flushes made durable after the last commit) and commits it.

use super::size::human;
use crate::cli::PoolArgs;
use anyhow::{Context, Result};
use ublk_target::volume::{Volume, VolumeOptions};

pub fn run(args: &PoolArgs) -> Result<()> {
    args.require_devices()?;
    let opts = VolumeOptions {
        cache_bytes: 16 << 20,
        ..VolumeOptions::default()
    };
    let volume = Volume::open(&args.meta, &args.data, &opts).with_context(|| {
        format!(
            "opening pool (meta {}, data {})",
            args.meta.display(),
            args.data.display()
        )
    })?;
    let info = volume.pool_info();
    let mapped = volume.mapped_blocks().context("walking the volume map")?;
    println!("pool id          {:#018x}", info.pool_id);
    println!("seq              {}", info.seq);
    println!(
        "metadata block   {} bytes, {} blocks ({})",
        info.meta_block_bytes,
        info.meta_blocks,
        human(info.meta_blocks * info.meta_block_bytes as u64)
    );
    println!(
        "  used / free    {} / {} ({} busy)",
        info.meta_blocks - info.meta_free_blocks - info.meta_busy_blocks,
        info.meta_free_blocks,
        info.meta_busy_blocks
    );
    println!(
        "data block       {} bytes, {} blocks ({})",
        info.data_block_bytes,
        info.data_blocks,
        human(info.data_blocks * info.data_block_bytes as u64)
    );
    println!(
        "  used / free    {} / {} ({} busy)",
        info.data_blocks - info.data_free_blocks - info.data_busy_blocks,
        info.data_free_blocks,
        info.data_busy_blocks
    );
    println!(
        "btree            height {}, {} items",
        info.tree_height, info.items
    );
    for level in volume.tree_shape().context("walking the tree")? {
        let per_node = level.items as f64 / level.nodes.max(1) as f64;
        println!(
            "  level {:<8} {} {}, {} items, {:.1} items per node",
            level.level,
            level.nodes,
            if level.level == 0 { "leaves" } else { "nodes" },
            level.items,
            per_node
        );
    }
    println!(
        "free space       base chain of {} extents, log of {} blocks ({} entries)",
        info.freelist_extents, info.freelog_blocks, info.freelog_entries
    );
    println!(
        "journal          region of {} blocks ({}), {} written since the last commit",
        info.journal_blocks,
        human(info.journal_blocks * info.data_block_bytes as u64),
        info.journal_used_blocks
    );
    println!(
        "volume 0         {} ({} bytes), {} blocks written ({})",
        human(volume.size_bytes()),
        volume.size_bytes(),
        mapped,
        human(mapped * info.data_block_bytes as u64)
    );
    volume.close()?;
    Ok(())
}
