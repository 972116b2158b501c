//! Several connections to one export, which advertises NBD's multi-conn
//! (a flush on any connection covers writes answered on every one):
//! - nbdcopy moves an image in and out over four connections at once and
//!   the bytes match;
//! - writes answered on one connection, then a flush answered on another,
//!   survive a kill -9 straight after that flush, round after round.

use rand::{Rng, SeedableRng};
use std::process::Command;
use tests::{require_tool, run_ok, NbdClient, Pool, CMD_FLUSH, CMD_WRITE, MIB};

#[test]
fn nbdcopy_over_four_connections_round_trips() {
    require_tool("nbdcopy", "libnbd-bin");
    let pool = Pool::mkfs("512M");
    let d = pool.add();
    let src = pool.dir.path().join("src.img");
    let out = pool.dir.path().join("out.img");
    // Random data with holes between the runs (nbdcopy sends zero requests
    // for those) and an odd tail.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let mut image = vec![0u8; (256 * MIB) as usize];
    for run in image.chunks_mut((3 * MIB) as usize).step_by(2) {
        rng.fill(&mut run[..(MIB + 12_288) as usize]);
    }
    std::fs::write(&src, &image).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .args(["--connections=4", "--requests=16", "--flush"])
            .arg(&src)
            .arg(&d.uri),
    );
    run_ok(
        Command::new("nbdcopy")
            .arg("--connections=4")
            .arg(&d.uri)
            .arg(&out),
    );
    let copied = std::fs::read(&out).unwrap();
    assert_eq!(
        copied.len(),
        512 * MIB as usize,
        "the export's whole size came out"
    );
    assert!(
        copied[..image.len()] == image[..],
        "the first 256 MiB came back as written"
    );
    assert!(
        copied[image.len()..].iter().all(|&b| b == 0),
        "the never-written rest reads as zeros"
    );
    pool.del(0);
    pool.check_clean();
}

const ROUNDS: u64 = 10;
const WRITES_PER_ROUND: u64 = 64;

fn block_for(block: u64, round: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(4096);
    while b.len() < 4096 {
        b.extend_from_slice(&round.to_le_bytes());
        b.extend_from_slice(&block.to_le_bytes());
    }
    b
}

#[test]
fn a_flush_on_one_connection_covers_writes_answered_on_another() {
    let pool = Pool::mkfs("64M");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    // Each round writes blocks (round * WRITES_PER_ROUND ..): every round's
    // blocks are new, so a lost write reads back as zeros.
    for round in 0..ROUNDS {
        let d = pool.add();
        let mut writer = NbdClient::connect(&d.socket).unwrap();
        let mut flusher = NbdClient::connect(&d.socket).unwrap();
        let blocks: Vec<u64> = (0..WRITES_PER_ROUND)
            .map(|i| round * WRITES_PER_ROUND + i)
            .collect();
        // Pipelined, in a random order, all sent before any answer is read.
        let mut order = blocks.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        for &block in &order {
            writer
                .send(
                    CMD_WRITE,
                    block,
                    block * 4096,
                    &block_for(block, round + 1),
                    0,
                )
                .unwrap();
        }
        for _ in &order {
            let (block, errno) = writer.reply().unwrap();
            assert_eq!(errno, 0, "write of block {block}");
        }
        flusher.send(CMD_FLUSH, 0, 0, &[], 0).unwrap();
        assert_eq!(
            flusher.reply().unwrap().1,
            0,
            "flush on the second connection"
        );
        d.kill9();
        pool.wait_released();

        let d = pool.add();
        let mut reader = NbdClient::connect(&d.socket).unwrap();
        let first = blocks[0] * 4096;
        let got = reader
            .read_at(first, (WRITES_PER_ROUND * 4096) as u32)
            .unwrap();
        for (i, data) in got.chunks(4096).enumerate() {
            let block = blocks[i];
            assert!(
                data == block_for(block, round + 1).as_slice(),
                "round {round}: block {block}, answered on one connection before a flush \
                 answered on another, was lost by the crash"
            );
        }
        drop(reader);
        pool.del(0);
    }
    pool.check_clean();
}
