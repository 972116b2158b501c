//! `lockd-bench`: request/grant pairs per second against a real `lockd`
//! process over loopback TCP.
//!
//! `lockd-bench --in-flight N --seconds S [--clients C] [--json]` runs one row:
//! C client processes (default 1) together keep N lock requests in flight on
//! distinct locks, each granted WRITE then released to NULL, as scoutfs's
//! lock-shrink flood does; every request/response pair counts. Without
//! `--in-flight` it runs the whole table: N = 1,000, 10,000, 40,000 with one
//! client, 40,000 with 4 clients, and the contended case (`--contended`): two
//! clients bouncing one WRITE lock, each grant needing an invalidation of the
//! other. Seed 000 reports ~60,000 pairs/s for scoutfs at ~40,000 in flight;
//! that figure is printed beside ours.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use lockd::client::{ClientConfig, ClientCore, ClientOutput};
use lockd::net::{spawn_conn, ConnEvent, Endpoint, Outbox};
use lockd::server::{run, ServerConfig};
use lockd::wire::{LockMsg, LockRange, Mode};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The scoutfs figure from seed 000 (pairs/s at ~40,000 in flight).
const SCOUTFS_PAIRS_PER_SEC: f64 = 60_000.0;
const CLUSTER_ID: u64 = 0xbe7c;
/// Not counted: connections settle and buffers grow first.
const WARMUP_MS: u64 = 500;

#[derive(Parser, Clone)]
#[command(name = "lockd-bench")]
struct Args {
    /// Lock requests kept in flight (all clients together); omit for the full table.
    #[arg(long)]
    in_flight: Option<u64>,
    /// Measured seconds per row (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Client processes sharing the in-flight requests.
    #[arg(long, default_value_t = 1)]
    clients: u64,
    /// Run only the contended row (two clients bouncing one WRITE lock).
    #[arg(long)]
    contended: bool,
    #[arg(long)]
    json: bool,
    /// Path of the lockd binary (default: next to this program).
    #[arg(long)]
    lockd: Option<String>,
    #[arg(long, hide = true)]
    child: Option<String>,
    #[arg(long, hide = true)]
    endpoint: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    zone: u64,
    #[arg(long, hide = true)]
    serve: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ChildReport {
    pairs: u64,
    seconds: f64,
    histogram_hex: String,
    /// Every pair, warm-up included, and the CPU time the process used:
    /// CPU per pair does not depend on how busy the machine is.
    pairs_all: u64,
    cpu_us: u64,
}

#[derive(Serialize)]
struct Row {
    case: String,
    clients: u64,
    in_flight: u64,
    pairs: u64,
    pairs_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    vs_scoutfs: f64,
    server_cpu_ns_per_pair: f64,
    client_cpu_ns_per_pair: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(addr) = &args.serve {
        return serve(addr);
    }
    if let Some(kind) = &args.child {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let report = runtime.block_on(child(kind, &args))?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rows = match (args.in_flight, args.contended) {
        (_, true) => vec![run_row(&args, "contended ping-pong", 2, 2, true)?],
        (Some(n), false) => vec![run_row(
            &args,
            &format!("{n} in flight"),
            args.clients,
            n,
            false,
        )?],
        (None, false) => vec![
            run_row(&args, "1,000 in flight", 1, 1_000, false)?,
            run_row(&args, "10,000 in flight", 1, 10_000, false)?,
            run_row(&args, "40,000 in flight", 1, 40_000, false)?,
            run_row(&args, "40,000 in flight, 4 clients", 4, 40_000, false)?,
            run_row(&args, "contended ping-pong", 2, 2, true)?,
        ],
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "lockd-bench: {} s per row, load average before: {}",
        args.seconds,
        load.trim()
    );
    println!(
        "{:<30} {:>7} {:>9} {:>12} {:>8} {:>8} {:>8} {:>10} {:>11} {:>11}",
        "case",
        "clients",
        "in-flight",
        "pairs/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "vs scoutfs",
        "srv ns/pair",
        "cli ns/pair"
    );
    for row in &rows {
        let versus = if row.vs_scoutfs.is_nan() {
            "-".to_string()
        } else {
            format!("{:.1}x", row.vs_scoutfs)
        };
        println!(
            "{:<30} {:>7} {:>9} {:>12.0} {:>8} {:>8} {:>8} {:>10} {:>11.0} {:>11.0}",
            row.case,
            row.clients,
            row.in_flight,
            row.pairs_per_sec,
            row.p50_us,
            row.p99_us,
            row.p999_us,
            versus,
            row.server_cpu_ns_per_pair,
            row.client_cpu_ns_per_pair
        );
    }
    Ok(())
}

/// The daemon, when no lockd binary sits next to this program.
fn serve(addr: &str) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let endpoint = Endpoint::parse(addr).map_err(|e| anyhow!(e))?;
        let mut config = ServerConfig::new(CLUSTER_ID);
        config.recovery_ms = 0;
        let daemon = run(endpoint.bind().await?, config)?;
        tokio::signal::ctrl_c().await?;
        daemon.shutdown().await;
        Ok(())
    })
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_lockd(args: &Args) -> Result<(Killed, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("lockd");
    let path = args.lockd.clone().map(Into::into).unwrap_or(sibling);
    let mut command = if path.exists() {
        let mut c = Command::new(&path);
        c.args([
            "--listen",
            &addr,
            "--cluster-id",
            &CLUSTER_ID.to_string(),
            "--recovery-ms",
            "0",
        ]);
        c
    } else {
        eprintln!(
            "lockd-bench: {} not built; serving from this binary (same daemon code)",
            path.display()
        );
        let mut c = Command::new(&me);
        c.args(["--serve", &addr]);
        c
    };
    command.env("RUST_LOG", "warn").stdout(Stdio::null());
    let child = Killed(command.spawn().context("starting lockd")?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            bail!("lockd did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, addr))
}

fn run_row(args: &Args, case: &str, clients: u64, in_flight: u64, contended: bool) -> Result<Row> {
    let (server, addr) = start_lockd(args)?;
    let me = std::env::current_exe()?;
    let children: Vec<Child> = (0..clients)
        .map(|zone| {
            let share = in_flight / clients + u64::from(zone < in_flight % clients);
            Command::new(&me)
                .args(["--child", if contended { "pingpong" } else { "flood" }])
                .args(["--endpoint", &addr, "--zone", &zone.to_string()])
                .args([
                    "--in-flight",
                    &share.to_string(),
                    "--seconds",
                    &args.seconds.to_string(),
                ])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut pairs, mut seconds, mut pairs_all, mut client_cpu_us) = (0u64, 0f64, 0u64, 0u64);
    for child in children {
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!("{case}: a client process failed ({})", output.status);
        }
        let report: ChildReport =
            serde_json::from_slice(&output.stdout).context("client report")?;
        pairs += report.pairs;
        pairs_all += report.pairs_all;
        client_cpu_us += report.cpu_us;
        seconds = seconds.max(report.seconds);
        let bytes = (0..report.histogram_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&report.histogram_hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()?;
        let part: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..])?;
        histogram.add(part)?;
    }
    let server_cpu_us = process_cpu_us(server.0.id())?;
    drop(server);
    let pairs_per_sec = pairs as f64 / seconds;
    let per_pair_ns = |cpu_us: u64| cpu_us as f64 * 1000.0 / pairs_all.max(1) as f64;
    Ok(Row {
        server_cpu_ns_per_pair: per_pair_ns(server_cpu_us),
        client_cpu_ns_per_pair: per_pair_ns(client_cpu_us),
        case: case.to_string(),
        clients,
        in_flight,
        pairs,
        pairs_per_sec,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        // The scoutfs figure is for the uncontended flood only.
        vs_scoutfs: if contended {
            f64::NAN
        } else {
            pairs_per_sec / SCOUTFS_PAIRS_PER_SEC
        },
    })
}

/// One client process: a ClientCore driven directly over the net layer, so
/// the measurement is the protocol and the daemon, not per-request tasks.
async fn child(kind: &str, args: &Args) -> Result<ChildReport> {
    let endpoint =
        Endpoint::parse(args.endpoint.as_deref().context("--endpoint")?).map_err(|e| anyhow!(e))?;
    let in_flight = args.in_flight.context("--in-flight")?;
    let contended = kind == "pingpong";
    let (events_tx, mut events) = mpsc::channel::<ConnEvent>(64);
    let outbox: Arc<Outbox> = Outbox::new();
    spawn_conn(endpoint.connect().await?, 1, outbox.clone(), events_tx);
    let client_id = (std::process::id() as u64) << 8 | args.zone;
    let mut core = ClientCore::new(ClientConfig::new(CLUSTER_ID, client_id));
    let start = Instant::now();
    let now_us = |start: Instant| start.elapsed().as_micros() as u64 + 1;
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let mut staging = Vec::new();
    core.connected(now_us(start), &mut out);
    let range = |slot: u64| {
        if contended {
            LockRange::new(0xc0, 0, 0)
        } else {
            LockRange::new(args.zone + 1, slot, slot)
        }
    };
    let slots = if contended { 1 } else { in_flight };
    let mut sent_at_us = vec![0u64; slots as usize];
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let measure_from_us = WARMUP_MS * 1000;
    let measure_to_us = measure_from_us + args.seconds * 1_000_000;
    let mut started = false;
    let (mut pairs, mut pairs_all) = (0u64, 0u64);
    loop {
        let now = now_us(start);
        for output in out.drain(..) {
            match output {
                ClientOutput::Send(frame) => frame.encode_into(frame.ack, &mut staging),
                ClientOutput::Ready { .. } if !started => {
                    started = true;
                    for slot in 0..slots {
                        sent_at_us[slot as usize] = now;
                        issue(
                            &mut core,
                            now,
                            LockMsg {
                                range: range(slot),
                                mode: Mode::Write,
                            },
                            &mut scratch,
                            &mut staging,
                        )?;
                    }
                }
                ClientOutput::Granted(msg) => {
                    pairs_all += 1;
                    let slot = if contended { 0 } else { msg.range.start };
                    if (measure_from_us..measure_to_us).contains(&now)
                        && (!contended || msg.mode == Mode::Write)
                    {
                        pairs += 1;
                        histogram.saturating_record(now - sent_at_us[slot as usize]);
                    }
                    if !contended {
                        let mode = if msg.mode == Mode::Write {
                            Mode::Null
                        } else {
                            Mode::Write
                        };
                        sent_at_us[slot as usize] = now;
                        issue(
                            &mut core,
                            now,
                            LockMsg {
                                range: msg.range,
                                mode,
                            },
                            &mut scratch,
                            &mut staging,
                        )?;
                    }
                }
                ClientOutput::Invalidate(token, msg) => {
                    // Ping-pong: give the lock up at once, then ask again.
                    core.invalidate_done(now, token, msg, &mut scratch);
                    encode_sends(scratch.drain(..), &mut staging);
                    sent_at_us[0] = now;
                    issue(
                        &mut core,
                        now,
                        LockMsg {
                            range: msg.range,
                            mode: Mode::Write,
                        },
                        &mut scratch,
                        &mut staging,
                    )?;
                }
                ClientOutput::Refused(reason) | ClientOutput::Close(reason) => bail!("{reason}"),
                ClientOutput::Failed(msg, error) => bail!("{msg:?} failed: {error:?}"),
                _ => {}
            }
        }
        if !staging.is_empty() {
            outbox.append(&mut staging);
        }
        if now >= measure_to_us {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            Ok(Some(ConnEvent::Frames(_, mut frames))) => {
                let now = now_us(start);
                for frame in frames.drain(..) {
                    core.receive(now, frame, &mut out);
                }
                core.flush(now, &mut out);
                outbox.recycle(frames);
            }
            Ok(Some(ConnEvent::Closed(_, reason))) => bail!("connection closed: {reason}"),
            Ok(None) => bail!("connection gone"),
            Err(_) => core.tick(now_us(start), &mut out),
        }
    }
    outbox.close();
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(&histogram, &mut bytes)
        .map_err(|e| anyhow!("{e:?}"))?;
    let histogram_hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(ChildReport {
        pairs,
        seconds: args.seconds as f64,
        histogram_hex,
        pairs_all,
        cpu_us: own_cpu_us(),
    })
}

/// User plus system CPU time of this process.
fn own_cpu_us() -> u64 {
    // SAFETY: getrusage fills the struct we pass and touches nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// User plus system CPU time of another process, from /proc (10 ms ticks).
fn process_cpu_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = &stat[stat.rfind(')').context("/proc stat format")? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(ticks * 1_000_000 / hz.max(1))
}

/// Sends one lock request: its frame goes straight to the staging buffer.
/// `scratch` is the caller's (empty) output vector, reused for every call.
fn issue(
    core: &mut ClientCore,
    now_us: u64,
    msg: LockMsg,
    scratch: &mut Vec<ClientOutput>,
    staging: &mut Vec<u8>,
) -> Result<()> {
    core.request(now_us, msg, scratch)?;
    encode_sends(scratch.drain(..), staging);
    Ok(())
}

fn encode_sends(outputs: impl IntoIterator<Item = ClientOutput>, staging: &mut Vec<u8>) {
    for output in outputs {
        if let ClientOutput::Send(frame) = output {
            frame.encode_into(frame.ack, staging);
        }
    }
}
