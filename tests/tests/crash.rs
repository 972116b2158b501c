//! Proves crash consistency of the real daemon: 20 times, kill -9 it while
//! fio writes with flushes and a tracking client pipelines writes and
//! flushes; after each crash `check` is clean, and every block reads back
//! the value it had at the last acknowledged flush or a value written
//! after it, never anything else and never an error.

use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::{require_tool, NbdClient, Pool, CMD_FLUSH, CMD_WRITE, MIB};

const KILLS: usize = 20;
/// Blocks the tracking client writes (the first 4 MiB of the volume).
const TRACKED_BLOCKS: u64 = 1024;
/// Writes the tracking client keeps in flight.
const BATCH: usize = 32;
/// Batches between flushes.
const BATCHES_PER_FLUSH: usize = 3;

/// A block's contents for write generation `gen` (0 = never written).
fn block_for(block: u64, gen: u64) -> Vec<u8> {
    if gen == 0 {
        return vec![0u8; 4096];
    }
    let mut b = Vec::with_capacity(4096);
    while b.len() < 4096 {
        b.extend_from_slice(&gen.to_le_bytes());
        b.extend_from_slice(&block.to_le_bytes());
    }
    b
}

fn gen_of(block: u64, data: &[u8]) -> Option<u64> {
    let gen = u64::from_le_bytes(data[..8].try_into().unwrap());
    (block_for(block, gen) == data).then_some(gen)
}

/// What each block may contain after a crash.
#[derive(Default)]
struct Model {
    durable: HashMap<u64, u64>,
    possible: HashMap<u64, Vec<u64>>,
}

impl Model {
    fn allowed(&self, block: u64) -> Vec<u64> {
        let mut a = vec![*self.durable.get(&block).unwrap_or(&0)];
        a.extend(self.possible.get(&block).into_iter().flatten());
        a
    }
}

/// Pipelines writes and flushes until the connection dies (the daemon is
/// killed meanwhile), updating the model as acknowledgements arrive.
fn write_until_killed(
    client: &mut NbdClient,
    model: &mut Model,
    next_gen: &mut u64,
    rng: &mut impl Rng,
) {
    let mut acked_since_flush: HashMap<u64, u64> = HashMap::new();
    let mut batches = 0;
    loop {
        let mut sent = HashMap::new();
        while sent.len() < BATCH {
            let block = rng.gen_range(0..TRACKED_BLOCKS);
            if sent.contains_key(&block) {
                continue;
            }
            *next_gen += 1;
            // Sent means it may land, acknowledged or not.
            model.possible.entry(block).or_default().push(*next_gen);
            sent.insert(block, *next_gen);
            if client
                .send(
                    CMD_WRITE,
                    block,
                    block * 4096,
                    &block_for(block, *next_gen),
                    0,
                )
                .is_err()
            {
                return;
            }
        }
        for _ in 0..BATCH {
            match client.reply() {
                Ok((block, 0)) => _ = acked_since_flush.insert(block, sent[&block]),
                Ok((block, errno)) => panic!("write of block {block} failed with errno {errno}"),
                Err(_) => return,
            }
        }
        batches += 1;
        if batches % BATCHES_PER_FLUSH != 0 {
            continue;
        }
        if client.send(CMD_FLUSH, u64::MAX, 0, &[], 0).is_err() {
            return;
        }
        match client.reply() {
            Ok((_, 0)) => {
                // Everything acknowledged before the flush is now durable.
                for (block, gen) in acked_since_flush.drain() {
                    model.durable.insert(block, gen);
                    model.possible.remove(&block);
                }
            }
            Ok((_, errno)) => panic!("flush failed with errno {errno}"),
            Err(_) => return,
        }
    }
}

/// Reads every tracked block and checks it against the model; then the
/// model starts over from what is on disk.
fn verify(client: &mut NbdClient, model: &mut Model, round: usize, seed: u64) {
    const PER_READ: u64 = 64;
    for first in (0..TRACKED_BLOCKS).step_by(PER_READ as usize) {
        let data = client
            .read_at(first * 4096, (PER_READ * 4096) as u32)
            .unwrap_or_else(|e| {
                panic!("round {round} seed {seed}: read of blocks {first}.. failed: {e}")
            });
        for (i, block_data) in data.chunks(4096).enumerate() {
            let block = first + i as u64;
            let allowed = model.allowed(block);
            let got = gen_of(block, block_data);
            assert!(
                got.is_some_and(|g| allowed.contains(&g)),
                "round {round} seed {seed}: block {block} holds {got:?}, allowed {allowed:?}"
            );
            model.durable.insert(block, got.unwrap());
        }
    }
    model.possible.clear();
}

#[test]
fn kill_9_during_writes_keeps_every_flushed_write() {
    require_tool("fio", "fio");
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let pool = Pool::mkfs("256M");
    let fio_job = concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/fio/crash-load.fio");
    let mut model = Model::default();
    let mut next_gen = 0u64;
    for round in 0..KILLS {
        let d = pool.add();
        let mut client = NbdClient::connect(&d.socket).unwrap();
        verify(&mut client, &mut model, round, seed);
        let mut fio = Command::new("fio")
            // Threads, not forked job processes: killing fio below then
            // ends the whole job instead of orphaning its workers.
            .arg("--thread")
            .arg(fio_job)
            // fio writes its verify state files into the working directory.
            .current_dir(pool.dir.path())
            .env("NBD_URI", &d.uri)
            .env("OFFSET", (TRACKED_BLOCKS * 4096).to_string())
            .env("SIZE", (60 * MIB).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting fio");
        let delay = Duration::from_millis(rng.gen_range(100..600));
        let pid = d.pid;
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: killing the daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        write_until_killed(&mut client, &mut model, &mut next_gen, &mut rng);
        killer.join().unwrap();
        d.kill9();
        let _ = fio.kill();
        let _ = fio.wait();
        pool.wait_released();
        pool.check_clean();
    }
    let d = pool.add();
    let mut client = NbdClient::connect(&d.socket).unwrap();
    verify(&mut client, &mut model, KILLS, seed);
    drop(client);
    pool.del(0);
    pool.check_clean();
    assert!(
        next_gen > KILLS as u64 * BATCH as u64,
        "the client wrote during every round"
    );
}
