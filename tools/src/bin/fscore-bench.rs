//! fscore-bench: fscore against redb, side by side, in one run, on files in
//! the same directory. Prints a table (or one JSON object with `--json`).
//!
//! Rows: random insert of N items (16-byte keys, 16..=64-byte values)
//! committing every 1,000 operations, random point lookups of present keys,
//! a forward range scan of everything; then the busy-extent allocator with
//! 1k and 1M busy extents (allocation + free pairs in alternating rounds;
//! peer = the 1k run).
//!
//!   cargo run --release --bin fscore-bench [-- --json] [--items N] [--large] [--dir PATH]
//!
//! The two systems run side by side in alternating slices of each phase
//! (10,000 inserts, 50,000 lookups, one full scan; 3 scans each), so a
//! change in the load of a shared machine falls on both alike; each
//! system's rate is its operations over the time of its own slices.
//!
//! `--large` adds the 10M-item rows (slow on a small machine);
//! `--skip-redb` and `--skip-allocator` leave parts out (for profiling);
//! The right half of the table is operations per CPU second of the whole
//! process (io_uring workers included): on a shared machine wall-clock
//! rates swing with the load, CPU rates much less.

use fscore::{Allocator, Extent, Key, MkfsOptions, OpenOptions, Pool};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redb::{ReadableDatabase, TableDefinition};
use std::path::{Path, PathBuf};
use std::time::Instant;

const TABLE: TableDefinition<u128, &[u8]> = TableDefinition::new("bench");
/// Operations per commit, as the issue asks.
const OPS_PER_COMMIT: u64 = 1_000;
/// Block cache of both systems, so neither wins by caching more: 3 GiB
/// holds either tree at 10M items (the machine has 24 GiB).
const CACHE_BYTES: u64 = 3 << 30;
const LOOKUPS: u64 = 1_000_000;
/// Allocation + free pairs timed per allocator configuration.
const ALLOC_PAIRS: u64 = 200_000;
/// Pairs per round: each round starts from a fresh copy of the prepared
/// allocator, so the busy count stays near its nominal size.
const ALLOC_PAIRS_PER_ROUND: u64 = 1_000;

struct Row {
    name: String,
    fscore: Rate,
    peer: &'static str,
    peer_rate: Rate,
}

struct Args {
    json: bool,
    /// Profiling aids: skip a part of the run.
    skip_redb: bool,
    skip_allocator: bool,
    items: Vec<u64>,
    dir: PathBuf,
}

fn parse_args() -> Args {
    let mut args = Args {
        json: false,
        skip_redb: false,
        skip_allocator: false,
        items: vec![1_000_000],
        dir: PathBuf::from("."),
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--json" => args.json = true,
            "--skip-redb" => args.skip_redb = true,
            "--skip-allocator" => args.skip_allocator = true,
            "--large" => args.items.push(10_000_000),
            "--items" => {
                args.items = vec![iter.next().and_then(|n| n.parse().ok()).expect("--items N")]
            }
            "--dir" => args.dir = PathBuf::from(iter.next().expect("--dir PATH")),
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// The i-th item of a run: a random 16-byte key and a 16..=64-byte value.
fn item(rng: &mut SmallRng) -> (u128, Vec<u8>) {
    let key: u128 = rng.gen();
    let len = rng.gen_range(16..=64);
    let value = (0..len).map(|_| rng.gen()).collect();
    (key, value)
}

fn fscore_key(key: u128) -> Key {
    Key::new((key >> 64) as u64, key as u64)
}

/// Operations per wall-clock second and per CPU second of the process.
#[derive(Clone, Copy)]
struct Rate {
    wall: f64,
    cpu: f64,
}

/// Time and CPU time spent in one system's share of a phase, summed over
/// its slices.
#[derive(Clone, Copy, Default)]
struct Spent {
    wall: f64,
    cpu: f64,
    ops: u64,
}

impl Spent {
    /// Runs `slice` (which returns how many operations it did) and adds
    /// its time.
    fn time(&mut self, slice: impl FnOnce() -> u64) {
        let (start, cpu) = (Instant::now(), process_cpu_secs());
        self.ops += slice();
        self.wall += start.elapsed().as_secs_f64();
        self.cpu += process_cpu_secs() - cpu;
    }
    fn rate(&self) -> Rate {
        Rate {
            wall: self.ops as f64 / self.wall.max(1e-9),
            cpu: self.ops as f64 / self.cpu.max(1e-9),
        }
    }
}

/// CPU seconds the whole process (all threads, io_uring workers included)
/// has used.
fn process_cpu_secs() -> f64 {
    // SAFETY: getrusage fills one rusage struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// One system under test. Both get the same items in the same order, and
/// the bench runs them in alternating slices of each phase, so a change in
/// the machine's load (it is shared) falls on both alike.
trait System {
    /// Inserts the next `count` items of the sequence, committing every
    /// `OPS_PER_COMMIT`; `last` makes the final partial batch durable too.
    fn insert(&mut self, count: u64, last: bool) -> u64;
    /// Looks up every key (all present); returns value bytes found.
    fn lookup(&mut self, keys: &[u128]) -> u64;
    /// Scans everything forward; returns the item count.
    fn scan(&mut self) -> u64;
}

struct Fscore {
    pool: Pool,
    rng: SmallRng,
    inserted: u64,
    meta: PathBuf,
    data: PathBuf,
}

impl Fscore {
    fn new(dir: &Path, items: u64, seed: u64) -> Fscore {
        let (meta, data) = (dir.join("fscore-meta"), dir.join("fscore-data"));
        // Room for the tree plus the copies a commit makes: ~1 KiB per item.
        let meta_bytes = (items * 1024).max(1 << 30);
        Pool::mkfs(&meta, &data, &MkfsOptions::new(meta_bytes, 64 << 20)).expect("mkfs");
        let pool = Pool::open(
            &meta,
            &data,
            &OpenOptions {
                cache_bytes: CACHE_BYTES,
                ..OpenOptions::default()
            },
        )
        .expect("open");
        Fscore {
            pool,
            rng: SmallRng::seed_from_u64(seed),
            inserted: 0,
            meta,
            data,
        }
    }
}

impl Drop for Fscore {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.meta);
        let _ = std::fs::remove_file(&self.data);
    }
}

impl System for Fscore {
    fn insert(&mut self, count: u64, last: bool) -> u64 {
        for _ in 0..count {
            let (key, value) = item(&mut self.rng);
            self.pool.insert(&fscore_key(key), &value).expect("insert");
            self.inserted += 1;
            if self.inserted.is_multiple_of(OPS_PER_COMMIT) {
                self.pool.commit().expect("commit");
            }
        }
        if last && !self.inserted.is_multiple_of(OPS_PER_COMMIT) {
            self.pool.commit().expect("commit");
        }
        count
    }

    fn lookup(&mut self, keys: &[u128]) -> u64 {
        let mut found = 0u64;
        for key in keys {
            self.pool
                .get_with(&fscore_key(*key), &mut |value| found += value.len() as u64)
                .expect("get");
        }
        found
    }

    fn scan(&mut self) -> u64 {
        let mut scanned = 0u64;
        self.pool
            .range_with(&Key::MIN, &Key::MAX, &mut |_, _| {
                scanned += 1;
                true
            })
            .expect("scan");
        scanned
    }
}

struct Redb {
    db: redb::Database,
    rng: SmallRng,
    /// Opened after the inserts, for lookups and scans.
    read: Option<redb::ReadOnlyTable<u128, &'static [u8]>>,
    path: PathBuf,
}

impl Redb {
    fn new(dir: &Path, seed: u64) -> Redb {
        let path = dir.join("redb.db");
        let _ = std::fs::remove_file(&path);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES as usize)
            .create(&path)
            .expect("redb create");
        Redb {
            db,
            rng: SmallRng::seed_from_u64(seed),
            read: None,
            path,
        }
    }

    fn table(&mut self) -> &redb::ReadOnlyTable<u128, &'static [u8]> {
        if self.read.is_none() {
            let txn = self.db.begin_read().expect("read");
            self.read = Some(txn.open_table(TABLE).expect("table"));
        }
        self.read.as_ref().expect("just opened")
    }
}

impl Drop for Redb {
    fn drop(&mut self) {
        self.read = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

impl System for Redb {
    fn insert(&mut self, count: u64, _last: bool) -> u64 {
        // Slices are whole multiples of OPS_PER_COMMIT except the last, so
        // transactions hold OPS_PER_COMMIT inserts each as in one loop.
        let mut done = 0;
        while done < count {
            let txn = self.db.begin_write().expect("begin");
            {
                let mut table = txn.open_table(TABLE).expect("table");
                for _ in 0..OPS_PER_COMMIT.min(count - done) {
                    let (key, value) = item(&mut self.rng);
                    table.insert(key, value.as_slice()).expect("insert");
                    done += 1;
                }
            }
            txn.commit().expect("commit");
        }
        count
    }

    fn lookup(&mut self, keys: &[u128]) -> u64 {
        let table = self.table();
        let mut found = 0u64;
        for key in keys {
            found += table
                .get(*key)
                .expect("get")
                .map_or(0, |value| value.value().len() as u64);
        }
        found
    }

    fn scan(&mut self) -> u64 {
        let table = self.table();
        let mut scanned = 0u64;
        for entry in table.range::<u128>(..).expect("range") {
            entry.expect("entry");
            scanned += 1;
        }
        scanned
    }
}

/// Inserts per slice of the insert phase (a whole number of commits).
const INSERT_SLICE: u64 = 10 * OPS_PER_COMMIT;
/// Lookups per slice of the lookup phase.
const LOOKUP_SLICE: usize = 50_000;
/// Full forward scans per system.
const SCANS: usize = 3;

/// Runs the three phases on each system in alternating slices (who goes
/// first alternates too); returns each system's [insert, lookup, scan].
fn bench_systems(systems: &mut [Box<dyn System>], items: u64, seed: u64) -> Vec<[Rate; 3]> {
    let mut spent = vec![[Spent::default(); 3]; systems.len()];
    let order = |round: usize, count: usize| -> Vec<usize> {
        let mut order: Vec<usize> = (0..count).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        order
    };
    let mut done = 0;
    let mut round = 0;
    while done < items {
        let count = INSERT_SLICE.min(items - done);
        let last = done + count == items;
        for index in order(round, systems.len()) {
            spent[index][0].time(|| systems[index].insert(count, last));
        }
        done += count;
        round += 1;
    }
    let keys = sample_keys(seed, items);
    for (round, slice) in keys.chunks(LOOKUP_SLICE).enumerate() {
        for index in order(round, systems.len()) {
            let mut found = 0;
            spent[index][1].time(|| {
                found = systems[index].lookup(slice);
                slice.len() as u64
            });
            assert!(found > 0);
        }
    }
    for round in 0..SCANS {
        for index in order(round, systems.len()) {
            let mut scanned = 0;
            spent[index][2].time(|| {
                scanned = systems[index].scan();
                scanned
            });
            assert_eq!(scanned, items);
        }
    }
    spent
        .iter()
        .map(|phases| phases.map(|phase| phase.rate()))
        .collect()
}

/// Keys that were inserted, in random order (regenerated from the seed).
fn sample_keys(seed: u64, items: u64) -> Vec<u128> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut keys: Vec<u128> = (0..items).map(|_| item(&mut rng).0).collect();
    let mut shuffle = SmallRng::seed_from_u64(seed ^ 1);
    let count = LOOKUPS.min(items) as usize;
    for index in 0..count {
        let other = shuffle.gen_range(index..keys.len());
        keys.swap(index, other);
    }
    keys.truncate(count);
    keys
}

/// An allocator with `busy` busy extents (every other block freed) and as
/// much free space again.
fn allocator_with_busy(busy: u64) -> Allocator {
    let end = busy * 4 + ALLOC_PAIRS_PER_ROUND * 4;
    let mut allocator = Allocator::all_free(0, end);
    let taken = allocator.alloc(busy * 2).expect("alloc");
    assert_eq!(taken.len, busy * 2);
    for index in 0..busy {
        allocator.free(Extent::new(index * 2, 1)).expect("free");
    }
    assert_eq!(allocator.busy_extents() as u64, busy);
    allocator
}

/// Allocation + free pairs against fresh copies of allocators with each
/// busy count, in alternating rounds (like the systems' phases, so load
/// changes fall on every configuration alike).
fn bench_allocators(busy: &[u64]) -> Vec<Rate> {
    let prepared: Vec<Allocator> = busy.iter().map(|busy| allocator_with_busy(*busy)).collect();
    let mut spent = vec![Spent::default(); busy.len()];
    for round in 0..ALLOC_PAIRS / ALLOC_PAIRS_PER_ROUND {
        let mut order: Vec<usize> = (0..busy.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let mut allocator = prepared[index].clone();
            spent[index].time(|| {
                for _ in 0..ALLOC_PAIRS_PER_ROUND {
                    let block = allocator.alloc_one().expect("alloc");
                    allocator.free(Extent::new(block, 1)).expect("free");
                }
                ALLOC_PAIRS_PER_ROUND
            });
        }
    }
    spent.iter().map(Spent::rate).collect()
}

fn main() {
    let args = parse_args();
    let dir = tempfile::Builder::new()
        .prefix("fscore-bench")
        .tempdir_in(&args.dir)
        .expect("bench directory");
    let mut rows = Vec::new();
    let none = Rate {
        wall: f64::NAN,
        cpu: f64::NAN,
    };
    for &items in &args.items {
        let seed = 0x5eed ^ items;
        let mut systems: Vec<Box<dyn System>> =
            vec![Box::new(Fscore::new(dir.path(), items, seed))];
        if !args.skip_redb {
            systems.push(Box::new(Redb::new(dir.path(), seed)));
        }
        let rates = bench_systems(&mut systems, items, seed);
        drop(systems);
        let fscore = rates[0];
        let redb = rates.get(1).copied().unwrap_or([none; 3]);
        let names = [
            "random insert, commit every 1000",
            "random point lookup",
            "forward range scan",
        ];
        for (index, name) in names.iter().enumerate() {
            let name = format!("{name} ({}M items)", items as f64 / 1e6);
            rows.push(Row {
                name,
                fscore: fscore[index],
                peer: "redb",
                peer_rate: redb[index],
            });
        }
    }
    if !args.skip_allocator {
        let rates = bench_allocators(&[1_000, 1_000_000]);
        let (at_1k, at_1m) = (rates[0], rates[1]);
        let peer = "fscore at 1k";
        rows.push(Row {
            name: "allocator alloc+free, 1k busy extents".into(),
            fscore: at_1k,
            peer,
            peer_rate: at_1k,
        });
        rows.push(Row {
            name: "allocator alloc+free, 1M busy extents".into(),
            fscore: at_1m,
            peer,
            peer_rate: at_1k,
        });
    }
    if args.json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                serde_json::json!({
                    "name": row.name,
                    "fscore_ops_per_sec": row.fscore.wall,
                    "peer": row.peer,
                    "peer_ops_per_sec": row.peer_rate.wall,
                    "ratio": row.fscore.wall / row.peer_rate.wall,
                    "fscore_ops_per_cpu_sec": row.fscore.cpu,
                    "peer_ops_per_cpu_sec": row.peer_rate.cpu,
                    "cpu_ratio": row.fscore.cpu / row.peer_rate.cpu,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "bench": "fscore", "rows": rows }));
        return;
    }
    println!(
        "{:<44} {:>12} {:>13} {:>12} {:>6} | {:>12} {:>12} {:>6}",
        "operation",
        "fscore ops/s",
        "peer",
        "peer ops/s",
        "ratio",
        "fscore/cpu-s",
        "peer/cpu-s",
        "ratio"
    );
    for row in &rows {
        println!(
            "{:<44} {:>12.0} {:>13} {:>12.0} {:>6.2} | {:>12.0} {:>12.0} {:>6.2}",
            row.name,
            row.fscore.wall,
            row.peer,
            row.peer_rate.wall,
            row.fscore.wall / row.peer_rate.wall,
            row.fscore.cpu,
            row.peer_rate.cpu,
            row.fscore.cpu / row.peer_rate.cpu
        );
    }
}
