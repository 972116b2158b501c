//! `scoutfs-ublk mkfs`: formats a pool holding one volume. Missing files are
//! created sparse: the data file at the volume size plus copy-on-write
//! slack, the metadata file at `META_FRACTION` of it (at least
//! `META_BYTES_MIN`). With `--preallocate` regular files are written with
//! zeros in full first (fscore's `FileStorage::write_zeros` says why).

use super::size::{human, parse_size};
use crate::cli::MkfsArgs;
use anyhow::{bail, Context, Result};
use std::path::Path;
use ublk_target::volume::{Volume, VolumeError, BLOCK_BYTES};

/// Volume bytes per metadata byte. Measured: a fully written volume's map
/// takes ~123 bytes of metadata per 4 KiB block (3% of the volume; one
/// item per block, leaves about half full after splits), and a transaction
/// that rewrites blocks all over the volume copies up to the whole tree
/// before its commit frees the old copy: 2 x 3% plus free-list and slack.
pub const META_FRACTION: u64 = 8;
/// Smallest metadata device created: superblocks, free lists and the tree
/// of a small volume with room to commit.
pub const META_BYTES_MIN: u64 = 64 << 20;

/// Data space beyond the volume size: a fully written volume must still
/// accept overwrites, and copy-on-write needs a new block before the old
/// one is freed (and the old one stays busy until the commit). A quarter
/// of the volume, at least the volume engine's reserve plus a 1 MiB chunk.
///
/// Why a quarter: copy-on-write scatters random overwrites over the free
/// space, so on a full volume the only room for a contiguous 1 MiB write is
/// slack that random writes have not fragmented (the allocator is best-fit:
/// 4 KiB writes take 4 KiB holes, large writes the large extents). With
/// 1/64 a full 2 GiB volume after random overwrites served 1 MiB writes as
/// ~256 separate 4 KiB I/Os and its sequential reads alike (~450 MiB/s);
/// with 1/8 ~600-930 MiB/s; with 1/4 ~1,300-1,600 MiB/s, near the backing
/// file (ci/bench-nbd, BENCHMARKS.md). The price is the data device: 25%
/// larger than the volume (the file is sparse: space is used as written).
pub const DATA_SLACK_FRACTION: u64 = 4;
pub const DATA_SLACK_BYTES_MIN: u64 = (ublk_target::volume::RESERVE_BLOCKS_MAX + 256) * BLOCK_BYTES;

pub fn slack(volume_bytes: u64) -> u64 {
    (volume_bytes / DATA_SLACK_FRACTION / BLOCK_BYTES * BLOCK_BYTES).max(DATA_SLACK_BYTES_MIN)
}

/// The largest volume (whole blocks) that fits a data device of `have`
/// bytes with its slack: the inverse of `--size`, so a device made for
/// `--size S` holds a volume of S again. None when nothing fits.
fn volume_for_device(have: u64) -> Option<u64> {
    let fraction = DATA_SLACK_FRACTION;
    // A few blocks above the answer (the divisions round down), then down
    // to the first volume whose slack fits.
    let estimate = (have / (fraction + 1) * fraction + 2 * BLOCK_BYTES)
        .min(have.checked_sub(DATA_SLACK_BYTES_MIN)?);
    let mut volume = estimate / BLOCK_BYTES * BLOCK_BYTES;
    while volume > 0 && volume + slack(volume) > have {
        volume -= BLOCK_BYTES;
    }
    (volume > 0).then_some(volume)
}

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
    // Before their sizes are read: a directory's is no size.
    fscore::Pool::validate_devices(meta, data)?;
    let requested = args.size.as_deref().map(parse_size).transpose()?;
    if let Some(size) = requested.filter(|size| size % BLOCK_BYTES != 0) {
        bail!("--size {size}: not a multiple of {BLOCK_BYTES} (a volume is whole 4 KiB blocks)");
    }
    let existing = device_bytes(data)?.filter(|&b| b > 0);
    let (volume_bytes, data_bytes) = match (requested, existing) {
        (Some(size), Some(have)) if !is_regular(data) => {
            if have < size + slack(size) {
                bail!(
                    "{} holds {have} bytes: too small for --size {size} plus {} of slack",
                    data.display(),
                    slack(size)
                );
            }
            (size, have)
        }
        (Some(size), _) => (size, size + slack(size)),
        (None, Some(have)) => match volume_for_device(have) {
            Some(volume) => (volume, have),
            None => bail!("{} holds only {have} bytes", data.display()),
        },
        (None, None) => bail!("{} does not exist: give --size", data.display()),
    };
    let meta_bytes = match device_bytes(meta)? {
        Some(have) if have > 0 && !is_regular(meta) => have,
        _ => (volume_bytes / META_FRACTION).max(META_BYTES_MIN),
    };
    let opts = fscore::MkfsOptions {
        preallocate: args.preallocate,
        overwrite: args.force,
        ..fscore::MkfsOptions::new(meta_bytes, data_bytes)
    };
    // Files this mkfs creates are removed if it fails: a half-made pool
    // (say, --preallocate on a file system too small) is no pool.
    let created: Vec<&Path> = [meta.as_path(), data.as_path()]
        .into_iter()
        .filter(|path| !path.exists())
        .collect();
    let made = Volume::create(meta, data, volume_bytes, &opts);
    if made.is_err() {
        for path in &created {
            let _ = std::fs::remove_file(path);
        }
    }
    let info = match made {
        Err(VolumeError::Pool(fscore::Error::PoolExists(what))) => bail!(
            "{what}: left as it is (`mkfs --force` formats over it, losing every volume \
             in that pool)"
        ),
        created => created.with_context(|| {
            format!(
                "formatting pool (meta {}, data {})",
                meta.display(),
                data.display()
            )
        })?,
    };
    // The data device's blocks hold the volume and its copy-on-write slack.
    println!(
        "pool {:#018x}: volume of {}, data {} at {} ({} blocks with copy-on-write slack), \
         metadata {} at {}",
        info.pool_id,
        human(volume_bytes),
        human(info.data_blocks * BLOCK_BYTES),
        data.display(),
        info.data_blocks,
        human(meta_bytes),
        meta.display(),
    );
    if let Some(warning) = super::host_space::shortfall(&[meta, data]) {
        eprintln!("{warning}");
    }
    Ok(())
}

fn is_regular(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_made_for_a_size_holds_that_size_again() {
        for size in [
            1u64 << 20,
            64 << 20,
            1 << 30,
            10 << 30,
            (3 << 30) + 4096 * 7,
        ] {
            let have = size + slack(size);
            assert_eq!(volume_for_device(have), Some(size), "size {size}");
            // One byte short: the volume must shrink to keep its slack.
            let smaller = volume_for_device(have - 1).unwrap();
            assert!(smaller < size && smaller + slack(smaller) < have);
        }
        assert_eq!(volume_for_device(DATA_SLACK_BYTES_MIN), None);
    }
}
