//! A metadata device that runs out of space (its file on a host file
//! system that fills up): the daemon fails the flush that cannot commit
//! instead of acknowledging it, `list` shows the device FAILED with the
//! cause, the daemon goes on serving reads and refuses writes,
//! `del` reports that its final commit failed, an open with too little
//! room made says it could not apply the journal and changes nothing, and
//! once the host has room again the pool opens, `check` is clean and every
//! write acknowledged before the last successful flush reads back.
//!
//! The metadata file lives on a small tmpfs this test mounts (root only).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::HashSet;
use tests::{run, run_ok, NbdClient, Pool, Tmpfs, CMD_FLUSH, CMD_WRITE};

const VOLUME_BYTES: u64 = 1 << 30;
const BLOCKS: u64 = VOLUME_BYTES / 4096;
/// Writes between flushes.
const BATCH: usize = 32;

/// Block `block`'s contents once written (each block is written once).
fn pattern(block: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(4096);
    while b.len() < 4096 {
        b.extend_from_slice(&block.to_le_bytes());
        b.extend_from_slice(&(!block).to_le_bytes());
    }
    b
}

/// Writes every block once, in a shuffled order, with a flush after each
/// batch, until a write or flush fails. Returns the blocks acknowledged
/// before a successful flush, every block sent, and what failed.
fn write_until_failure(client: &mut NbdClient) -> (HashSet<u64>, HashSet<u64>, String) {
    let mut order: Vec<u64> = (0..BLOCKS).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let mut durable = HashSet::new();
    let mut sent = HashSet::new();
    for batch in order.chunks(BATCH) {
        for &block in batch {
            client
                .send(CMD_WRITE, block, block * 4096, &pattern(block), 0)
                .unwrap();
            sent.insert(block);
        }
        let mut failed = None;
        for _ in batch {
            let (block, errno) = client.reply().unwrap();
            if errno != 0 {
                failed.get_or_insert(format!("write of block {block}: errno {errno}"));
            }
        }
        if let Some(failed) = failed {
            return (durable, sent, failed);
        }
        client.send(CMD_FLUSH, u64::MAX, 0, &[], 0).unwrap();
        match client.reply().unwrap() {
            (_, 0) => durable.extend(batch),
            (_, errno) => return (durable, sent, format!("flush: errno {errno}")),
        }
    }
    panic!("all {BLOCKS} blocks written and flushed: the metadata never ran out of space");
}

#[test]
fn metadata_device_out_of_space_loses_no_flushed_write() {
    tests::require_root("mounts a small tmpfs for the metadata file");
    let pool = Pool::empty();
    let tmpfs = Tmpfs::mount(&pool.dir.path().join("small"), "4m");
    let data = pool.data();
    let pool = pool.with_devices(tmpfs.path.join("meta"), data);

    let mut c = pool.cmd();
    c.args(["mkfs", "--size", "1G"]);
    run_ok(pool.pool_args(&mut c));
    let socket = pool.add().socket;
    let mut client = NbdClient::connect(&socket).unwrap();
    assert_eq!(client.size_bytes, VOLUME_BYTES);
    let (durable, sent, failure) = write_until_failure(&mut client);
    assert!(
        durable.len() as u64 > BLOCKS / 100,
        "only {} blocks durable before the metadata filled ({failure}): too little to prove anything",
        durable.len()
    );
    // `list` shows the device FAILED, with the cause, within a few seconds
    // (the daemon looks once a second).
    let mut entry = pool.entry(0);
    for _ in 0..50 {
        if entry["state"] == "FAILED" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        entry = pool.entry(0);
    }
    assert_eq!(entry["state"], "FAILED", "{entry}");
    let cause = entry["failure"].as_str().unwrap_or_default();
    assert!(cause.contains("No space left on device"), "{entry}");
    let listed = run_ok(pool.cmd().arg("list"));
    assert!(
        listed.contains("nbd0: FAILED") && listed.contains("No space left on device"),
        "{listed}"
    );

    // Reads go on (from what the pool holds in memory and on the data
    // device); writes are refused, not acknowledged and lost.
    let mut some_durable: Vec<u64> = durable.iter().copied().take(64).collect();
    some_durable.sort_unstable();
    for &block in &some_durable {
        let got = client.read_at(block * 4096, 4096).unwrap_or_else(|e| {
            panic!("read of block {block} after the pool stopped committing: {e}")
        });
        assert!(got == pattern(block), "block {block} read back wrong");
    }
    let block = some_durable[0];
    client
        .send(CMD_WRITE, block, block * 4096, &[0x77; 4096], 0)
        .unwrap();
    let (_, errno) = client.reply().unwrap();
    assert_ne!(
        errno, 0,
        "a write after the pool stopped committing must fail"
    );
    drop(client);

    // The final commit cannot succeed either: `del` must say so, not
    // "stopped".
    let out = run(pool.cmd().args(["del", "-n", "0"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "del succeeded after a failed commit: {stderr}"
    );
    assert!(
        stderr.contains("the daemon stopped with an error")
            && stderr.contains("final commit failed"),
        "del's error names the failed final commit: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device") && stderr.contains("`add` the pool again"),
        "del's error gives the cause and what to do: {stderr}"
    );

    // Too little room made: the open that applies the journal cannot
    // commit; it says so, and the pool is as it was.
    let records: u64 = pool
        .check_clean()
        .lines()
        .find_map(|l| l.strip_prefix("journal: ")?.split(' ').next()?.parse().ok())
        .expect("check reports the journal's records");
    // Thousands of map changes need far more than 16 KiB of new metadata.
    assert!(
        records > 1000,
        "{records} journal records: too few to prove anything"
    );
    tmpfs.resize("4112k");
    let mut c = pool.cmd();
    c.arg("add")
        .arg("--nbd")
        .arg(format!("unix:{}", socket.display()));
    let out = run(pool.pool_args(&mut c));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "add with too little room: {stderr}");
    assert!(
        stderr.contains(&format!("applying the {records} journal records"))
            && stderr.contains("nothing was lost"),
        "{stderr}"
    );
    // The cause, once: not again at the end as the error's source.
    assert_eq!(
        stderr.matches("No space left on device").count(),
        1,
        "{stderr}"
    );
    pool.check_clean();

    tmpfs.resize("256m");
    pool.check_clean();

    pool.add();
    let mut client = NbdClient::connect(&socket).unwrap();
    let zeros = vec![0u8; 4096];
    const PER_READ: u64 = 256;
    for first in (0..BLOCKS).step_by(PER_READ as usize) {
        let got = client
            .read_at(first * 4096, (PER_READ * 4096) as u32)
            .unwrap();
        for (i, got) in got.chunks(4096).enumerate() {
            let block = first + i as u64;
            let written = got == pattern(block).as_slice();
            let ok = if durable.contains(&block) {
                written
            } else if sent.contains(&block) {
                written || got == zeros.as_slice()
            } else {
                got == zeros.as_slice()
            };
            assert!(
                ok,
                "block {block} (durable: {}, sent: {}) reads back neither its write nor zeros as allowed",
                durable.contains(&block),
                sent.contains(&block)
            );
        }
    }
    drop(client);
    run_ok(pool.cmd().args(["del", "-n", "0"]));
}
