//! `lockd --listen ADDR --cluster-id ID`: the cluster lock daemon.
//! `lockd stat --connect ADDR --cluster-id ID`: print a running daemon's counts
//! and grant latency percentiles (SIGUSR1 makes the daemon log them too).
//! SIGTERM or SIGINT shut it down cleanly.

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use lockd::client::{LockClient, LockClientConfig};
use lockd::net::{Endpoint, DEFAULT_PORT};
use lockd::server::{run, ServerConfig};
use lockd::wire::Stats;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(name = "lockd", about = "scoutfs-ublk cluster lock daemon")]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// TCP address (host:port, :port or port; host defaults to 127.0.0.1) or unix:/path.
    #[arg(long, default_value_t = format!("127.0.0.1:{DEFAULT_PORT}"))]
    listen: String,
    /// Cluster id (decimal or 0x hex); clients of another cluster are refused.
    #[arg(long, value_parser = parse_u64)]
    cluster_id: Option<u64>,
    /// How long a disconnected client's locks stay held for it to reconnect.
    #[arg(long, default_value_t = 10_000)]
    grace_ms: u64,
    #[arg(long, default_value_t = 1_000)]
    heartbeat_interval_ms: u64,
    #[arg(long, default_value_t = 5_000)]
    heartbeat_timeout_ms: u64,
    /// After start, only re-asserted locks are granted for this long.
    #[arg(long, default_value_t = 10_000)]
    recovery_ms: u64,
    /// Runtime threads; 1 runs every task on one thread (the lock state
    /// machine is one task anyway, and no cross-thread wake-ups are paid).
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
}

#[derive(Subcommand)]
enum Sub {
    /// Print a running daemon's counts and latency percentiles.
    Stat {
        #[arg(long, default_value_t = format!("127.0.0.1:{DEFAULT_PORT}"))]
        connect: String,
        #[arg(long, value_parser = parse_u64)]
        cluster_id: u64,
        #[arg(long)]
        json: bool,
    },
}

fn parse_u64(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{text:?}: {e}"))
}

fn print_stats(stats: &Stats) {
    println!("clients connected   {}", stats.clients_connected);
    println!("sessions            {}", stats.sessions);
    println!("locks               {}", stats.locks);
    println!("waiters             {}", stats.waiters);
    println!("grants total        {}", stats.grants_total);
    println!("invalidations total {}", stats.invalidations_total);
    println!(
        "grant latency us    p50 {}  p99 {}  p999 {}  max {}",
        stats.grant_p50_us, stats.grant_p99_us, stats.grant_p999_us, stats.grant_max_us
    );
}

/// Errors end the process with one line, `lockd: what: why` (anyhow's
/// chain), as scoutfs-ublk reports them, not main's Debug dump (with a
/// stack trace wherever RUST_BACKTRACE is set).
fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run_command(Args::parse()) {
        eprintln!("lockd: {e:#}");
        std::process::exit(1);
    }
}

fn run_command(args: Args) -> Result<()> {
    let runtime = if args.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.worker_threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    if let Some(Sub::Stat {
        connect,
        cluster_id,
        json,
    }) = args.command
    {
        let endpoint = Endpoint::parse(&connect).map_err(|e| anyhow!(e))?;
        let client = LockClient::connect(LockClientConfig::new(endpoint, cluster_id)).await?;
        let stats = client.stat().await?;
        client.farewell().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&stats)?);
        } else {
            print_stats(&stats);
        }
        return Ok(());
    }
    let cluster_id = args.cluster_id.context("--cluster-id is required")?;
    let endpoint = Endpoint::parse(&args.listen).map_err(|e| anyhow!(e))?;
    let config = ServerConfig {
        cluster_id,
        grace_ms: args.grace_ms,
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        heartbeat_timeout_ms: args.heartbeat_timeout_ms,
        recovery_ms: args.recovery_ms,
    };
    let listener = endpoint
        .bind()
        .await
        .with_context(|| format!("binding {endpoint}"))?;
    let daemon = run(listener, config)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            _ = usr1.recv() => {
                if let Some(stats) = daemon.stats().await {
                    log::info!("stats: {}", serde_json::to_string(&stats)?);
                }
            }
        }
    }
    daemon.shutdown().await;
    Ok(())
}
