//! `scoutfs-ublk bench --serve-raw FILE --nbd ADDRESS`: a file served as it
//! is through this project's NBD server, with no volume behind it: the
//! same handshake, request parsing, reply path and io_uring data I/O
//! (`UringDataIo`, O_DIRECT) the daemon uses, and nothing else. What
//! ci/bench-nbd measures on it is the front end's own cost, the ceiling of
//! any volume served this way on that machine.

use super::bench::RawFile;
use super::nbd_daemon::{export, stop_signal, EXPORT_NAME};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::rc::Rc;
use ublk_target::nbd::{serve, Address, Listener};
use ublk_target::target::SECTOR_BYTES;
use ublk_target::volume::{UringDataIo, POLL_DEFAULT};

pub fn run(file: &Path, address: &str) -> Result<()> {
    let address = Address::parse(address).map_err(|e| anyhow!("--nbd: {e}"))?;
    let size_bytes = std::fs::metadata(file)
        .with_context(|| format!("{}", file.display()))?
        .len();
    if size_bytes == 0 || size_bytes % SECTOR_BYTES != 0 {
        bail!(
            "{}: {size_bytes} bytes; --serve-raw needs a regular file of a positive multiple of {SECTOR_BYTES} bytes",
            file.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let stop = stop_signal()?;
        // The daemon's polling default: the front end as `add` runs it.
        let io = UringDataIo::open(file, POLL_DEFAULT)
            .with_context(|| format!("opening {}", file.display()))?;
        let target = Rc::new(RawFile { io, size_bytes });
        let listener = Listener::bind(&address)
            .await
            .with_context(|| format!("listening on {address:?}"))?;
        println!(
            "serving {} (raw, no volume) at {}",
            file.display(),
            listener.address().uri(EXPORT_NAME)
        );
        serve(listener, target, export(size_bytes), stop).await?;
        Ok(())
    })
}
