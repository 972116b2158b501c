//! `scoutfs-ublk mkfs`: formats a pool holding one volume. Missing files are
//! created sparse: the data file at the volume size, the metadata file at
//! `META_FRACTION` of it (at least `META_BYTES_MIN`).

use super::size::{human, parse_size};
use crate::cli::MkfsArgs;
use anyhow::{bail, Context, Result};
use std::path::Path;
use ublk_target::volume::{Volume, BLOCK_BYTES};

/// Volume bytes per metadata byte: a written 4 KiB block costs about 40
/// bytes of leaf item, and copy-on-write of the tree needs room for a
/// second copy of what a transaction changes; 1/32 leaves ample margin.
pub const META_FRACTION: u64 = 32;
/// Smallest metadata device created: superblocks, free lists and the tree
/// of a small volume with room to commit.
pub const META_BYTES_MIN: u64 = 64 << 20;

/// Size of an existing file or block device.
fn device_bytes(path: &Path) -> Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    if !path.exists() {
        return Ok(None);
    }
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Some(f.seek(SeekFrom::End(0))?))
}

pub fn run(args: &MkfsArgs) -> Result<()> {
    let (meta, data) = (&args.pool.meta, &args.pool.data);
    let requested = args.size.as_deref().map(parse_size).transpose()?;
    let data_bytes = match (requested, device_bytes(data)?) {
        (Some(size), Some(have)) if have < size && !is_regular(data) => {
            bail!(
                "{} holds {} bytes, less than --size {}",
                data.display(),
                have,
                size
            )
        }
        (Some(size), _) => size,
        (None, Some(have)) if have > 0 => have,
        (None, _) => bail!("{} does not exist: give --size", data.display()),
    };
    let volume_bytes = data_bytes / BLOCK_BYTES * BLOCK_BYTES;
    let meta_bytes = match device_bytes(meta)? {
        Some(have) if have > 0 && !is_regular(meta) => have,
        _ => (volume_bytes / META_FRACTION).max(META_BYTES_MIN),
    };
    let opts = fscore::MkfsOptions::new(meta_bytes, data_bytes);
    let info = Volume::create(meta, data, volume_bytes, &opts).with_context(|| {
        format!(
            "formatting pool (meta {}, data {})",
            meta.display(),
            data.display()
        )
    })?;
    println!(
        "pool {:#018x}: volume of {} ({} data blocks), metadata {} at {}, data at {}",
        info.pool_id,
        human(volume_bytes),
        info.data_blocks,
        human(meta_bytes),
        meta.display(),
        data.display()
    );
    Ok(())
}

fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file())
        .unwrap_or(false)
}
