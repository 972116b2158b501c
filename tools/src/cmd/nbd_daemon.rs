//! Serving a volume over NBD: `add` on a machine without ublk (or with
//! `--nbd`). Unless `--foreground`, the command forks a daemon that leaves
//! the session, opens the pool, listens, registers itself (see `registry`)
//! and reports back through a pipe; the command prints how to reach it and
//! exits. SIGTERM or SIGINT stop the daemon cleanly: it stops accepting,
//! finishes in-flight requests, commits, unregisters and exits.

use super::daemon::{
    abort_on_panic, detach, device_known, pipe, record_failure, watch_for_failure,
};
use super::registry::{self, Entry};
use super::size::human;
use crate::cli::AddArgs;
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use ublk_target::nbd::{serve, Address, Export, Listener};
use ublk_target::target::SECTOR_BYTES;
use ublk_target::volume::{UringDataIo, Volume, VolumeOptions, BLOCK_BYTES};

/// The export name clients ask for (the default export "" works too).
pub const EXPORT_NAME: &str = "scoutfs";
/// Last line of the daemon's report to the starting command.
const REPORT_END: &str = "--\n";

struct Spec {
    id: u32,
    address: Address,
    meta: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Polling after each data completion (`UringDataIo`).
    poll: Duration,
}

pub fn add(args: &AddArgs) -> Result<()> {
    let id = registry::reserve_id(args.dev_id)?;
    let address = match &args.nbd {
        Some(text) => Address::parse(text).map_err(|e| anyhow!("--nbd: {e}")),
        None => Ok(Address::Unix(
            registry::run_dir().join(format!("nbd-{id}.sock")),
        )),
    };
    let address = match address {
        Ok(a) => a,
        Err(e) => {
            registry::release_id(id);
            return Err(e);
        }
    };
    let spec = Spec {
        id,
        address,
        meta: args.pool.meta.clone(),
        data: args.pool.data.clone(),
        log: registry::run_dir().join(format!("nbd-{id}.log")),
        poll: Duration::from_micros(args.poll_us),
    };
    let result = if args.foreground {
        run(&spec, None)
    } else {
        start(&spec)
    };
    if result.is_err() || args.foreground {
        registry::release_id(id);
    }
    result
}

/// Forks the daemon; returns once it listens (printing how to use it) or
/// failed (with its reason).
fn start(spec: &Spec) -> Result<()> {
    let (read_end, write_end) = pipe()?;
    // SAFETY: no threads exist yet in this process; the child runs this
    // program's own code and exits.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            drop(read_end);
            let mut report = std::fs::File::from(write_end);
            let status = match detach(&spec.log).and_then(|()| run(spec, Some(&mut report))) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = write!(report, "ERR {e:#}\n{REPORT_END}");
                    eprintln!("scoutfs-ublk nbd daemon {}: {e:#}", spec.id);
                    registry::release_id(spec.id);
                    1
                }
            };
            std::process::exit(status);
        }
        child => {
            drop(write_end);
            // The report ends at REPORT_END (the daemon keeps the pipe open)
            // or at EOF (the daemon exited).
            let mut text = String::new();
            let mut lines = std::io::BufReader::new(std::fs::File::from(read_end));
            while !text.ends_with(REPORT_END) {
                if lines
                    .read_line(&mut text)
                    .context("reading the daemon's report")?
                    == 0
                {
                    break;
                }
            }
            let text = text.trim_end_matches(REPORT_END).to_string();
            if let Some(info) = text.strip_prefix("OK\n") {
                print!("{info}");
                return Ok(());
            }
            let mut status = 0;
            // SAFETY: reaping our own child, which has exited or is exiting.
            unsafe { libc::waitpid(child, &mut status, 0) };
            match text.strip_prefix("ERR ") {
                Some(reason) => bail!("{}", reason.trim_end()),
                None => bail!("the NBD daemon failed to start; see {}", spec.log.display()),
            }
        }
    }
}

/// Opens the volume and serves it until SIGTERM/SIGINT. `report` is the
/// pipe to the starting command (None in the foreground: print instead).
fn run(spec: &Spec, report: Option<&mut std::fs::File>) -> Result<()> {
    abort_on_panic();
    let volume =
        Volume::open(&spec.meta, &spec.data, &VolumeOptions::default()).with_context(|| {
            format!(
                "opening the pool (meta {}, data {})",
                spec.meta.display(),
                spec.data.display()
            )
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let served = local.block_on(&rt, serve_volume(spec, &volume, report));
    let closed = volume.close().map_err(anyhow::Error::from);
    // For `del`, once the daemon has served; a failure to start reaches
    // `add` through the pipe instead.
    if let Some(e) = served.as_ref().err().or(closed.as_ref().err()) {
        record_failure(&format!("{e:#}"));
    }
    registry::release_id(spec.id);
    served?;
    closed?;
    log::info!("nbd daemon {} stopped cleanly", spec.id);
    Ok(())
}

async fn serve_volume(
    spec: &Spec,
    volume: &std::sync::Arc<Volume>,
    report: Option<&mut std::fs::File>,
) -> Result<()> {
    let stop = stop_signal()?;
    let io = UringDataIo::open(volume.data_path(), spec.poll).context("opening the data device")?;
    let handle = Rc::new(volume.handle(io));
    let listener = Listener::bind(&spec.address)
        .await
        .with_context(|| format!("listening on {:?}", spec.address))?;
    let address = listener.address();
    let entry = Entry {
        id: spec.id,
        pid: std::process::id(),
        address: match &address {
            Address::Unix(p) => format!("unix:{}", p.display()),
            Address::Tcp(hp) => hp.clone(),
        },
        uri: address.uri(EXPORT_NAME),
        meta: spec.meta.clone(),
        data: spec.data.clone(),
        size_bytes: volume.size_bytes(),
        log: spec.log.clone(),
        started: registry::start_time(std::process::id()),
    };
    registry::publish(&entry)?;
    let info = usage(&entry);
    match report {
        Some(pipe) => {
            pipe.write_all(format!("OK\n{info}{REPORT_END}").as_bytes())?;
        }
        None => print!("{info}"),
    }
    let export = export(volume.size_bytes());
    log::info!(
        "nbd daemon {} serving {} at {}",
        spec.id,
        human(volume.size_bytes()),
        entry.uri
    );
    device_known(registry::nbd_device(spec.id));
    let _watching = watch_for_failure(volume.clone());
    serve(listener, handle, export, async move {
        stop.await;
        log::info!("nbd daemon {}: stopping", spec.id);
    })
    .await?;
    Ok(())
}

/// The export of `size_bytes` this project serves: named `EXPORT_NAME`,
/// any sector-aligned request, whole data blocks preferred.
pub fn export(size_bytes: u64) -> Export {
    Export {
        name: EXPORT_NAME.into(),
        size_bytes,
        block_min_bytes: SECTOR_BYTES as u32,
        block_preferred_bytes: BLOCK_BYTES as u32,
    }
}

/// Completes at the first SIGTERM or SIGINT. The handlers are installed
/// when this is called (a signal before the first poll is not lost); must
/// be called inside a tokio runtime.
pub fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// What `add` prints: where the volume is and how to use it.
pub fn usage(e: &Entry) -> String {
    let note = exposure_note(&e.address).unwrap_or_default();
    format!(
        "nbd{id}: {size} volume served over NBD (daemon pid {pid})\n\
         \x20 URI:     {uri}\n\
         \x20 info:    nbdinfo '{uri}'\n\
         \x20 write:   qemu-io -f raw -c 'write -P 0xab 0 1M' '{uri}'\n\
         \x20 read:    qemu-io -f raw -c 'read -P 0xab 0 1M' '{uri}'\n\
         \x20 fio:     fio --name=randwrite --ioengine=nbd --uri='{uri}' --rw=randwrite --bs=4k --iodepth=32 --size=256M\n\
         \x20 stop:    scoutfs-ublk del -n {id}\n{note}",
        id = e.id,
        size = human(e.size_bytes),
        pid = e.pid,
        uri = e.uri,
    )
}

/// For an export other hosts can reach: NBD has neither authentication nor
/// encryption, so whoever reaches the port can read and write the volume.
/// None for a unix socket or a loopback address.
fn exposure_note(address: &str) -> Option<String> {
    let addr: std::net::SocketAddr = address.parse().ok()?;
    if addr.ip().is_loopback() {
        return None;
    }
    let reach = if addr.ip().is_unspecified() {
        format!(
            "every interface of this host (remote clients use its address for {})",
            addr.ip()
        )
    } else {
        addr.to_string()
    };
    Some(format!(
        "  note:    served on {reach}, without authentication or encryption: any host \
         that reaches the port can read and write the volume\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::exposure_note;

    #[test]
    fn exports_other_hosts_reach_carry_a_note() {
        assert_eq!(exposure_note("unix:/run/pool.sock"), None);
        assert_eq!(exposure_note("127.0.0.1:10809"), None);
        assert_eq!(exposure_note("[::1]:10809"), None);
        let all = exposure_note("0.0.0.0:10809").unwrap();
        assert!(
            all.contains("every interface") && all.contains("without authentication"),
            "{all}"
        );
        assert!(exposure_note("[::]:10809")
            .unwrap()
            .contains("every interface"));
        let one = exposure_note("192.0.2.7:10809").unwrap();
        assert!(
            one.contains("served on 192.0.2.7:10809, without authentication"),
            "{one}"
        );
    }
}
