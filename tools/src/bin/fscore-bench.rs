//! fscore-bench: fscore against redb, side by side, in one run, on files in
//! the same directory. Prints a table (or one JSON object with `--json`).
//!
//! Rows: random insert of N items (16-byte keys, 16..=64-byte values)
//! committing every 1,000 operations, random point lookups of present keys,
//! a forward range scan of everything; then the busy-extent allocator with
//! 1k and 1M busy extents (allocation + free pairs; peer = the 1k run).
//!
//!   cargo run --release --bin fscore-bench [-- --json] [--items N] [--large] [--dir PATH]
//!
//! `--large` adds the 10M-item rows (slow on a small machine);
//! `--skip-redb` and `--skip-allocator` leave parts out (for profiling).

use fscore::{Allocator, Extent, Key, MkfsOptions, OpenOptions, Pool};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redb::{ReadableDatabase, TableDefinition};
use std::path::{Path, PathBuf};
use std::time::Instant;

const TABLE: TableDefinition<u128, &[u8]> = TableDefinition::new("bench");
/// Operations per commit, as the issue asks.
const OPS_PER_COMMIT: u64 = 1_000;
/// Block cache of both systems, so neither wins by caching more.
const CACHE_BYTES: u64 = 1 << 30;
const LOOKUPS: u64 = 1_000_000;
/// Allocation + free pairs timed per allocator configuration.
const ALLOC_PAIRS: u64 = 200_000;
/// Pairs per round: each round starts from a fresh copy of the prepared
/// allocator, so the busy count stays near its nominal size.
const ALLOC_PAIRS_PER_ROUND: u64 = 1_000;

struct Row {
    name: String,
    fscore_ops_per_sec: f64,
    peer: &'static str,
    peer_ops_per_sec: f64,
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
    let mut args = Args { json: false, skip_redb: false, skip_allocator: false, items: vec![1_000_000], dir: PathBuf::from(".") };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--json" => args.json = true,
            "--skip-redb" => args.skip_redb = true,
            "--skip-allocator" => args.skip_allocator = true,
            "--large" => args.items.push(10_000_000),
            "--items" => args.items = vec![iter.next().and_then(|n| n.parse().ok()).expect("--items N")],
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

fn rate(ops: u64, start: Instant) -> f64 {
    ops as f64 / start.elapsed().as_secs_f64()
}

/// CPU seconds this thread has used (a diagnostic on a busy machine).
fn thread_cpu_secs() -> f64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    time.tv_sec as f64 + time.tv_nsec as f64 / 1e9
}

fn bench_fscore(dir: &Path, items: u64, seed: u64) -> [f64; 3] {
    let (meta, data) = (dir.join("fscore-meta"), dir.join("fscore-data"));
    // Room for the tree plus the copies a commit makes: ~1 KiB per item.
    let meta_bytes = (items * 1024).max(1 << 30);
    Pool::mkfs(&meta, &data, &MkfsOptions::new(meta_bytes, 64 << 20)).expect("mkfs");
    let pool = Pool::open(&meta, &data, &OpenOptions { cache_bytes: CACHE_BYTES }).expect("open");
    let mut rng = SmallRng::seed_from_u64(seed);
    let start = Instant::now();
    for index in 1..=items {
        let (key, value) = item(&mut rng);
        pool.insert(&fscore_key(key), &value).expect("insert");
        if index % OPS_PER_COMMIT == 0 {
            pool.commit().expect("commit");
        }
    }
    pool.commit().expect("commit");
    let insert = rate(items, start);
    let keys = sample_keys(seed, items);
    let start = Instant::now();
    let cpu = thread_cpu_secs();
    let mut found = 0u64;
    for key in &keys {
        pool.get_with(&fscore_key(*key), &mut |value| found += value.len() as u64).expect("get");
    }
    let lookup = rate(keys.len() as u64, start);
    if std::env::var_os("FSCORE_BENCH_CPU").is_some() {
        eprintln!("fscore lookups: {:.0}/cpu-s", keys.len() as f64 / (thread_cpu_secs() - cpu));
    }
    assert!(found > 0);
    let start = Instant::now();
    let mut scanned = 0u64;
    pool.range_with(&Key::MIN, &Key::MAX, &mut |_, _| {
        scanned += 1;
        true
    })
    .expect("scan");
    assert_eq!(scanned, items);
    let scan = rate(scanned, start);
    drop(pool);
    let _ = std::fs::remove_file(&meta);
    let _ = std::fs::remove_file(&data);
    [insert, lookup, scan]
}

fn bench_redb(dir: &Path, items: u64, seed: u64) -> [f64; 3] {
    let path = dir.join("redb.db");
    let _ = std::fs::remove_file(&path);
    let db = redb::Builder::new().set_cache_size(CACHE_BYTES as usize).create(&path).expect("redb create");
    let mut rng = SmallRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut done = 0;
    while done < items {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(TABLE).expect("table");
            for _ in 0..OPS_PER_COMMIT.min(items - done) {
                let (key, value) = item(&mut rng);
                table.insert(key, value.as_slice()).expect("insert");
                done += 1;
            }
        }
        txn.commit().expect("commit");
    }
    let insert = rate(items, start);
    let keys = sample_keys(seed, items);
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(TABLE).expect("table");
    let start = Instant::now();
    let cpu = thread_cpu_secs();
    let mut found = 0u64;
    for key in &keys {
        found += table.get(*key).expect("get").map_or(0, |value| value.value().len() as u64);
    }
    let lookup = rate(keys.len() as u64, start);
    if std::env::var_os("FSCORE_BENCH_CPU").is_some() {
        eprintln!("redb lookups: {:.0}/cpu-s", keys.len() as f64 / (thread_cpu_secs() - cpu));
    }
    assert!(found > 0);
    let start = Instant::now();
    let mut scanned = 0u64;
    for entry in table.range::<u128>(..).expect("range") {
        entry.expect("entry");
        scanned += 1;
    }
    assert_eq!(scanned, items);
    let scan = rate(scanned, start);
    drop(table);
    drop(txn);
    drop(db);
    let _ = std::fs::remove_file(&path);
    [insert, lookup, scan]
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

fn bench_allocator(busy: u64) -> f64 {
    let prepared = allocator_with_busy(busy);
    let mut elapsed = 0.0;
    for _ in 0..ALLOC_PAIRS / ALLOC_PAIRS_PER_ROUND {
        let mut allocator = prepared.clone();
        let start = Instant::now();
        for _ in 0..ALLOC_PAIRS_PER_ROUND {
            let block = allocator.alloc_one().expect("alloc");
            allocator.free(Extent::new(block, 1)).expect("free");
        }
        elapsed += start.elapsed().as_secs_f64();
    }
    ALLOC_PAIRS as f64 / elapsed
}

fn main() {
    let args = parse_args();
    let dir = tempfile::Builder::new().prefix("fscore-bench").tempdir_in(&args.dir).expect("bench directory");
    let mut rows = Vec::new();
    for &items in &args.items {
        let seed = 0x5eed ^ items;
        let redb = if args.skip_redb { [f64::NAN; 3] } else { bench_redb(dir.path(), items, seed) };
        let fscore = bench_fscore(dir.path(), items, seed);
        let names = ["random insert, commit every 1000", "random point lookup", "forward range scan"];
        for (index, name) in names.iter().enumerate() {
            rows.push(Row {
                name: format!("{name} ({}M items)", items as f64 / 1e6),
                fscore_ops_per_sec: fscore[index],
                peer: "redb",
                peer_ops_per_sec: redb[index],
            });
        }
    }
    if !args.skip_allocator {
        let at_1k = bench_allocator(1_000);
        let at_1m = bench_allocator(1_000_000);
        rows.push(Row { name: "allocator alloc+free, 1k busy extents".into(), fscore_ops_per_sec: at_1k, peer: "itself at 1k", peer_ops_per_sec: at_1k });
        rows.push(Row { name: "allocator alloc+free, 1M busy extents".into(), fscore_ops_per_sec: at_1m, peer: "itself at 1k", peer_ops_per_sec: at_1k });
    }
    if args.json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|row| {
                serde_json::json!({
                    "name": row.name,
                    "fscore_ops_per_sec": row.fscore_ops_per_sec,
                    "peer": row.peer,
                    "peer_ops_per_sec": row.peer_ops_per_sec,
                    "ratio": row.fscore_ops_per_sec / row.peer_ops_per_sec,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "bench": "fscore", "rows": rows }));
        return;
    }
    println!("{:<48} {:>14} {:>14} {:>14} {:>7}", "operation", "fscore ops/s", "peer", "peer ops/s", "ratio");
    for row in &rows {
        println!(
            "{:<48} {:>14.0} {:>14} {:>14.0} {:>7.2}",
            row.name,
            row.fscore_ops_per_sec,
            row.peer,
            row.peer_ops_per_sec,
            row.fscore_ops_per_sec / row.peer_ops_per_sec
        );
    }
}
