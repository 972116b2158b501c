//! `scoutfs-ublk bench`: the volume engine measured in process, side by side
//! with its own backing file. No front end, no kernel block layer, no
//! client: each job keeps `--depth` requests in flight through a
//! `VolumeHandle` (io_uring data I/O, as the NBD daemon does) and through
//! the same io_uring code on a raw file of the volume's size, and prints
//! IOPS, MiB/s, the ratio and the CPU time per request of each.
//!
//! Jobs, in order: 1 MiB sequential write (which also fills the volume, so
//! the reads that follow read written blocks), 1 MiB sequential read, 4 KiB
//! random write, 4 KiB random write with a flush after every 32 writes,
//! 4 KiB random read.

use super::size::{human, parse_size};
use crate::cli::BenchArgs;
use anyhow::{bail, Context, Result};
use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};
use ublk_target::target::BlockTarget;
use ublk_target::volume::{DataIo, UringDataIo, Volume, VolumeOptions, BLOCK_BYTES};
use ublk_target::{AlignedBuf, TargetError};

#[derive(Clone, Copy)]
struct Job {
    name: &'static str,
    write: bool,
    random: bool,
    block_bytes: u64,
    /// Flush after this many writes (0: never).
    flush_every: u64,
}

const JOBS: [Job; 5] = [
    Job {
        name: "seqwrite-1m",
        write: true,
        random: false,
        block_bytes: 1 << 20,
        flush_every: 0,
    },
    Job {
        name: "seqread-1m",
        write: false,
        random: false,
        block_bytes: 1 << 20,
        flush_every: 0,
    },
    Job {
        name: "randwrite-4k",
        write: true,
        random: true,
        block_bytes: 4096,
        flush_every: 0,
    },
    Job {
        name: "randwrite-4k-flush32",
        write: true,
        random: true,
        block_bytes: 4096,
        flush_every: 32,
    },
    Job {
        name: "randread-4k",
        write: false,
        random: true,
        block_bytes: 4096,
        flush_every: 0,
    },
];

/// Most requests one job keeps in flight: the NBD daemon's bound.
const DEPTH_MAX: usize = 256;

struct Outcome {
    ops: u64,
    bytes: u64,
    seconds: f64,
    cpu_seconds: f64,
}

/// The raw backing file as a target: the same io_uring code, no map.
/// Writes are answered when their data write completes.
pub(crate) struct RawFile {
    pub(crate) io: UringDataIo,
    pub(crate) size_bytes: u64,
}

impl BlockTarget for RawFile {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.io
            .read_at(offset, buf)
            .await
            .map_err(|e| TargetError::Io(e.to_string()))
    }
    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), TargetError> {
        self.io
            .write_at(offset, data)
            .await
            .map_err(|e| TargetError::Io(e.to_string()))
    }
    async fn flush(&self) -> Result<(), TargetError> {
        self.io
            .sync()
            .await
            .map_err(|e| TargetError::Io(e.to_string()))
    }
    async fn discard(&self, _offset: u64, _len: u64) -> Result<(), TargetError> {
        Err(TargetError::NotSupported)
    }
    async fn write_zeroes(&self, _o: u64, _l: u64, _u: bool) -> Result<(), TargetError> {
        Err(TargetError::NotSupported)
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// xorshift64*: a cheap, seeded source of offsets (no shared state).
fn next_random(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.set(x);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Runs `job` on `target` with `depth` requests in flight for `duration`
/// (sequential jobs stop early at the end of the device).
async fn run_job<T: BlockTarget>(
    target: &T,
    job: Job,
    depth: usize,
    duration: Duration,
) -> Result<Outcome> {
    let blocks = target.size_bytes() / job.block_bytes;
    let next_seq = Cell::new(0u64);
    let random = Cell::new(0x9e37_79b9_7f4a_7c15u64);
    let writes = Cell::new(0u64);
    let ops = Cell::new(0u64);
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let worker = || async {
        let mut buf = AlignedBuf::zeroed(job.block_bytes as usize);
        buf.fill(0x5a);
        while start.elapsed() < duration {
            let block = if job.random {
                next_random(&random) % blocks
            } else {
                let b = next_seq.get();
                if b >= blocks {
                    break;
                }
                next_seq.set(b + 1);
                b
            };
            let offset = block * job.block_bytes;
            if job.write {
                target.write(offset, &buf, false).await?;
                writes.set(writes.get() + 1);
                if job.flush_every > 0 && writes.get().is_multiple_of(job.flush_every) {
                    target.flush().await?;
                }
            } else {
                target.read(offset, &mut buf).await?;
            }
            ops.set(ops.get() + 1);
        }
        Ok::<(), TargetError>(())
    };
    let results = futures::future::join_all((0..depth).map(|_| worker())).await;
    if job.write {
        target
            .flush()
            .await
            .map_err(|e| anyhow::anyhow!("final flush: {e}"))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    for result in results {
        result.map_err(|e| anyhow::anyhow!("{}: {e}", job.name))?;
    }
    Ok(Outcome {
        ops: ops.get(),
        bytes: ops.get() * job.block_bytes,
        seconds,
        cpu_seconds: cpu_seconds() - cpu_start,
    })
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(file) = &args.serve_raw {
        let address = args.nbd.as_deref().context("--serve-raw needs --nbd")?;
        return super::serve_raw::run(file, address);
    }
    let size = parse_size(&args.size)?;
    if size == 0 || size % (1 << 20) != 0 {
        bail!("--size must be a positive multiple of 1 MiB");
    }
    if args.depth == 0 || args.depth > DEPTH_MAX {
        bail!("--depth must be between 1 and {DEPTH_MAX}");
    }
    if let Some(unknown) = args
        .jobs
        .iter()
        .find(|j| !JOBS.iter().any(|job| job.name == *j))
    {
        bail!("unknown job {unknown:?}");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("scoutfs-ublk-bench")
        .tempdir_in(&args.dir)
        .with_context(|| format!("a scratch directory in {}", args.dir.display()))?;
    let (meta, data, raw) = (
        dir.path().join("meta"),
        dir.path().join("data"),
        dir.path().join("raw"),
    );
    let meta_bytes = (size / super::mkfs::META_FRACTION).max(super::mkfs::META_BYTES_MIN);
    let data_bytes = size + super::mkfs::slack(size);
    // Preallocated, as ci/bench-nbd makes its pool: copy-on-write reaches
    // the data file's slack, which the fill does not write, and a sparse
    // file's holes cost the host file system's allocation on the I/O path.
    Volume::create(
        &meta,
        &data,
        size,
        &fscore::MkfsOptions {
            preallocate: true,
            ..fscore::MkfsOptions::new(meta_bytes, data_bytes)
        },
    )
    .context("creating the bench pool")?;
    allocate_file(&raw, size)?;
    let volume = Volume::open(&meta, &data, &VolumeOptions::default())?;
    let duration = Duration::from_secs_f64(args.seconds);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    // No polling after completions (the NBD daemon's default polls): a
    // polling thread is busy while it waits, which would turn the CPU
    // column into wall time; both systems run the same I/O path either way.
    let rows = local.block_on(&rt, async {
        let handle = Rc::new(volume.handle(UringDataIo::open(&data, Duration::ZERO)?));
        let raw_file = RawFile {
            io: UringDataIo::open(&raw, Duration::ZERO)?,
            size_bytes: size,
        };
        let mut rows = Vec::new();
        for job in JOBS {
            if !args.jobs.is_empty() && !args.jobs.iter().any(|j| j == job.name) {
                continue;
            }
            let ours = run_job(&*handle, job, args.depth, duration).await?;
            let peer = if args.no_raw {
                None
            } else {
                Some(run_job(&raw_file, job, args.depth, duration).await?)
            };
            rows.push((job, ours, peer));
        }
        Ok::<_, anyhow::Error>(rows)
    })?;
    volume.close()?;
    print_rows(args, size, &rows);
    Ok(())
}

/// A file of `bytes` whose blocks are all allocated and written, so the
/// raw peer pays no file system allocation the volume's data file paid
/// during its fill.
fn allocate_file(path: &Path, bytes: u64) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(bytes)?;
    // SAFETY: fallocate on a file we own.
    let rc = unsafe {
        libc::fallocate(
            std::os::unix::io::AsRawFd::as_raw_fd(&file),
            0,
            0,
            bytes as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("fallocate of the raw file");
    }
    Ok(())
}

fn print_rows(args: &BenchArgs, size: u64, rows: &[(Job, Outcome, Option<Outcome>)]) {
    let rate = |o: &Outcome| o.ops as f64 / o.seconds;
    let mib = |o: &Outcome| o.bytes as f64 / o.seconds / (1 << 20) as f64;
    let cpu_us = |o: &Outcome| o.cpu_seconds / o.ops.max(1) as f64 * 1e6;
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(job, ours, peer)| {
                let mut row = serde_json::json!({
                    "job": job.name,
                    "scoutfs": {"iops": rate(ours), "mib_s": mib(ours), "cpu_us_per_op": cpu_us(ours)},
                });
                if let Some(peer) = peer {
                    row["raw"] = serde_json::json!({"iops": rate(peer), "mib_s": mib(peer), "cpu_us_per_op": cpu_us(peer)});
                    row["ratio"] = (rate(ours) / rate(peer)).into();
                }
                row
            })
            .collect();
        let out = serde_json::json!({"size_bytes": size, "depth": args.depth, "seconds": args.seconds, "jobs": list});
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
        return;
    }
    println!(
        "volume engine vs its raw backing file: {} volume, {} in flight, {} s per job",
        human(size),
        args.depth,
        args.seconds
    );
    println!(
        "{:22} {:8} {:>10} {:>9} {:>12} {:>7}",
        "job", "system", "IOPS", "MiB/s", "CPU us/op", "ratio"
    );
    for (job, ours, peer) in rows {
        println!(
            "{:22} {:8} {:10.0} {:9.1} {:12.2}",
            job.name,
            "scoutfs",
            rate(ours),
            mib(ours),
            cpu_us(ours)
        );
        let Some(peer) = peer else { continue };
        println!(
            "{:22} {:8} {:10.0} {:9.1} {:12.2} {:6.2}x",
            "",
            "raw",
            rate(peer),
            mib(peer),
            cpu_us(peer),
            rate(ours) / rate(peer)
        );
    }
}

const _: () = assert!(BLOCK_BYTES == 4096);
