//! Proves the NBD export answers BLOCK_STATUS for base:allocation as its
//! thin map stands, to real clients: `nbdinfo --map` (libnbd) reports
//! exactly the 4 KiB blocks written as data and everything else as holes
//! that read as zeros, after partial-block writes, discards, write-zeroes
//! with and without unmap, and a run longer than one answer covers; and
//! `qemu-img map` (qemu's NBD client) reports the same.

use std::process::Command;
use tests::{require_tool, run_ok, Pool, MIB};

const BLOCK: u64 = 4096;
const SIZE: u64 = 256 * MIB;

/// (offset, length, hole) runs, adjacent runs of one kind merged: a server
/// may split its answer anywhere (the client asks again), so only the
/// merged map is defined.
fn merged(runs: impl IntoIterator<Item = (u64, u64, bool)>) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for (offset, length, hole) in runs {
        match out.last_mut() {
            Some(last) if last.2 == hole && last.0 + last.1 == offset => last.1 += length,
            _ => out.push((offset, length, hole)),
        }
    }
    out
}

/// What nbdinfo says, as runs.
fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, bool)> {
    let json = run_ok(Command::new("nbdinfo").args(["--map", "--json", uri]));
    let extents: serde_json::Value = serde_json::from_str(&json).expect("nbdinfo --json");
    merged(extents.as_array().unwrap().iter().map(|e| {
        let kind = e["type"].as_u64().unwrap();
        assert!(
            kind == 0 || kind == 3,
            "type {kind}: data or hole+zero only"
        );
        (
            e["offset"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            kind == 3,
        )
    }))
}

#[test]
fn block_status_reports_the_thin_map() {
    require_tool("nbdinfo", "libnbd-bin");
    require_tool("qemu-io", "qemu-utils");
    let pool = Pool::mkfs("256M");
    let d = pool.add();
    // The model: which 4 KiB blocks hold data.
    let mut data = vec![false; (SIZE / BLOCK) as usize];
    let mut mark = |offset: u64, len: u64, is_data: bool| {
        for block in offset / BLOCK..(offset + len).div_ceil(BLOCK) {
            data[block as usize] = is_data;
        }
    };
    d.qemu_io_ok(&[
        "write -P 0x11 1M 1M",
        "write -P 0x22 10M 4k",
        "write -P 0x33 100M 512", // part of a block: the block is data
        "write -P 0x44 150M 40M", // 10,240 blocks: more than one answer holds
        "write -P 0x55 50M 1M",
        "write -P 0x66 60M 1M",
        "write -P 0x77 255M 1M", // up to the last block
    ]);
    mark(MIB, MIB, true);
    mark(10 * MIB, BLOCK, true);
    mark(100 * MIB, 512, true);
    mark(150 * MIB, 40 * MIB, true);
    mark(50 * MIB, MIB, true);
    mark(60 * MIB, MIB, true);
    mark(255 * MIB, MIB, true);
    d.qemu_io_ok(&[
        "discard 1536k 64k",  // a hole inside data
        "write -z -u 50M 1M", // zeroes that may unmap: a hole
        "write -z 60M 1M",    // zeroes kept allocated: still data
    ]);
    mark(1536 * 1024, 64 * 1024, false);
    mark(50 * MIB, MIB, false);
    let expected = merged(
        data.iter()
            .enumerate()
            .map(|(i, &is_data)| (i as u64 * BLOCK, BLOCK, !is_data)),
    );
    assert_eq!(nbdinfo_map(&d.uri), expected);

    // qemu's NBD client reads the same map (without the context it would
    // report the whole export as data).
    let json = run_ok(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &d.uri]));
    let extents: serde_json::Value = serde_json::from_str(&json).expect("qemu-img map json");
    let qemu = merged(extents.as_array().unwrap().iter().map(|e| {
        (
            e["start"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            !e["data"].as_bool().unwrap(),
        )
    }));
    assert_eq!(qemu, expected);
    pool.del(0);
    pool.check_clean();
}
