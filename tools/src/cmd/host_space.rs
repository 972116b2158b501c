//! Room on the host for a pool in sparse files. A sparse pool takes host
//! space as it is written; when the file system holding it fills, a data
//! write fails and the pool stops writing (it serves reads, and opens again
//! once there is room: nothing acknowledged by a flush is lost). `mkfs` and
//! `add` say so up front when the files could outgrow their file system.

use super::size::human;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A warning when the pool's regular files, grown to their full size,
/// would need more than their file systems have free; None when they fit
/// (or are block devices, or written in full).
pub fn shortfall(paths: &[&Path]) -> Option<String> {
    // Per file system: what the files on it can still take, and who they are.
    let mut by_fs: BTreeMap<u64, (u64, Vec<&Path>)> = BTreeMap::new();
    for &path in paths {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        // st_blocks counts 512-byte units whatever the file system's block.
        let growth = meta.len().saturating_sub(meta.blocks() * 512);
        let entry = by_fs.entry(meta.dev()).or_default();
        entry.0 += growth;
        entry.1.push(path);
    }
    let mut lines = Vec::new();
    for (growth, files) in by_fs.into_values() {
        let Ok(stat) = nix::sys::statvfs::statvfs(files[0]) else {
            continue;
        };
        let free = stat.blocks_available() * stat.fragment_size();
        if growth > free {
            let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
            lines.push(format!(
                "warning: the file system holding {} has {} free, and the pool's sparse files \
                 there can still grow by {}: once it is full, writes fail and the pool stops \
                 writing until there is room (`mkfs --preallocate` reserves the space up front)",
                names.join(" and "),
                human(free),
                human(growth)
            ));
        }
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}
