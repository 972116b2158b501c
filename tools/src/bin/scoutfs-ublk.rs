//! The `scoutfs-ublk` command: mkfs, add, del, list, recover, check, dump, bench.

use clap::Parser;

#[derive(Parser)]
#[command(name = "scoutfs-ublk", version, about = "thin, copy-on-write, crash-consistent block volumes served through ublk or NBD")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
