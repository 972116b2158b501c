//! Command line of `scoutfs-ublk` (clap). Subcommands and flags follow
//! ublksrv's `ublk add / del / list / recover` with `-n`, `-q`, `-d`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "scoutfs-ublk",
    version,
    about = "Thin, copy-on-write, crash-consistent block volumes served through ublk or NBD"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Format a pool: a metadata device and a data device (files are created sparse).
    Mkfs(MkfsArgs),
    /// Serve the pool's volume: /dev/ublkbN where the kernel has ublk, else an NBD export.
    Add(AddArgs),
    /// Stop a served device, committing first (fails if that commit fails).
    Del(DelArgs),
    /// List served devices.
    List(ListArgs),
    /// Restart the daemon of a ublk device whose daemon died, keeping /dev/ublkbN.
    Recover(RecoverArgs),
    /// Check a pool that is not in use: every block, every invariant, space accounting.
    Check(PoolArgs),
    /// Print the superblock, tree shapes and space usage of a pool.
    Dump(PoolArgs),
    /// Measure the volume engine in process against its raw backing file (a scratch pool).
    Bench(BenchArgs),
}

impl Command {
    /// The pool a subcommand names, if it names one.
    pub fn pool(&self) -> Option<&PoolArgs> {
        match self {
            Command::Mkfs(args) => Some(&args.pool),
            Command::Add(args) => Some(&args.pool),
            Command::Check(pool) | Command::Dump(pool) => Some(pool),
            Command::Del(_) | Command::List(_) | Command::Recover(_) | Command::Bench(_) => None,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Directory for the scratch pool and raw file (removed afterwards).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Volume size (e.g. 1G); also the raw file's size.
    #[arg(long, default_value = "1G")]
    pub size: String,
    /// Seconds per job and system (sequential jobs end early at the end of the volume).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub depth: usize,
    /// Run only these jobs (comma-separated: seqwrite-1m, seqread-1m,
    /// randwrite-4k, randwrite-4k-flush32, randread-4k; a read job runs on
    /// whatever the jobs before it wrote).
    #[arg(long, value_delimiter = ',')]
    pub jobs: Vec<String>,
    /// Leave out the raw file (profiling the volume alone).
    #[arg(long)]
    pub no_raw: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Instead of the jobs: serve FILE as it is (no volume, no map) through
    /// this project's NBD server at --nbd, in the foreground until SIGTERM
    /// or SIGINT. ci/bench-nbd measures the NBD front end alone with it.
    #[arg(long, value_name = "FILE", requires = "nbd")]
    pub serve_raw: Option<PathBuf>,
    /// With --serve-raw: where to listen (unix:PATH, HOST:PORT, or PORT on
    /// 127.0.0.1).
    #[arg(long, value_name = "ADDRESS", requires = "serve_raw")]
    pub nbd: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct PoolArgs {
    /// Metadata device or file.
    #[arg(long)]
    pub meta: PathBuf,
    /// Data device or file.
    #[arg(long)]
    pub data: PathBuf,
}

impl PoolArgs {
    /// Fails, naming the missing path, unless both devices exist: commands
    /// that open a pool say which one is missing, not just ENOENT.
    pub fn require_devices(&self) -> anyhow::Result<()> {
        for path in [&self.meta, &self.data] {
            if !path.exists() {
                anyhow::bail!(
                    "{} does not exist (make a pool with `scoutfs-ublk mkfs`)",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
pub struct MkfsArgs {
    #[command(flatten)]
    pub pool: PoolArgs,
    /// Volume size (e.g. 2G, 512M). A data file that does not exist is
    /// created sparse at this size plus 1/4 copy-on-write slack, a metadata
    /// file at 1/8 of it (at least 64M). Without --size the volume is what
    /// an existing data device holds beyond that slack.
    #[arg(long)]
    pub size: Option<String>,
    /// Write zeros over the metadata and data files before formatting
    /// (regular files only), so that no later write lands in a hole: the
    /// host file system then never allocates blocks on the I/O path, and
    /// flushes stay one device flush. Takes as long as writing the files.
    #[arg(long)]
    pub preallocate: bool,
    /// Format even if the metadata device already holds a pool or the data
    /// device a pool's data, losing every volume in that pool (without it,
    /// mkfs refuses such devices).
    #[arg(long, short = 'f')]
    pub force: bool,
}

/// Largest `add --poll-us`: polling is for the gaps between completions
/// of flowing I/O, not a way to keep a CPU busy while the device idles.
pub const POLL_US_MAX: u64 = 100_000;

#[derive(Args, Debug, Clone)]
pub struct AddArgs {
    #[command(flatten)]
    pub pool: PoolArgs,
    /// ublk device id (default: the next free one).
    #[arg(short = 'n', long = "number")]
    pub dev_id: Option<u32>,
    /// Number of ublk queues.
    #[arg(short = 'q', long = "queues", default_value_t = 1)]
    pub queues: u16,
    /// Depth of each ublk queue.
    #[arg(short = 'd', long = "depth", default_value_t = 64)]
    pub depth: u16,
    /// Serve NBD at this address instead of ublk: unix:PATH (mode 0600),
    /// HOST:PORT, or PORT (on 127.0.0.1).
    #[arg(long)]
    pub nbd: Option<String>,
    /// Stay in the foreground instead of starting a daemon.
    #[arg(long)]
    pub foreground: bool,
    /// NBD: after a data I/O completes, the serving thread keeps polling
    /// for completions while data I/O is outstanding (up to 2 ms without
    /// one) and this many microseconds after the last one before it sleeps
    /// (lower latency for a busy CPU while I/O flows); 0 never polls, at
    /// most 100000 (a tenth of a second).
    #[arg(
        long = "poll-us",
        default_value_t = ublk_target::volume::POLL_DEFAULT.as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(0..=POLL_US_MAX)
    )]
    pub poll_us: u64,
}

#[derive(Args, Debug, Clone)]
pub struct DelArgs {
    /// Device id to stop.
    #[arg(
        short = 'n',
        long = "number",
        conflicts_with = "all",
        required_unless_present = "all"
    )]
    pub dev_id: Option<u32>,
    /// Stop every device.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// Only this device.
    #[arg(short = 'n', long = "number")]
    pub dev_id: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RecoverArgs {
    /// Device id to recover.
    #[arg(short = 'n', long = "number")]
    pub dev_id: u32,
}
