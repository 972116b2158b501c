//! The `scoutfs-ublk` command: mkfs, add, del, list, recover, check, dump.

use clap::Parser;
use tools::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Mkfs(_)
        | Command::Add(_)
        | Command::Del(_)
        | Command::List(_)
        | Command::Recover(_)
        | Command::Check(_)
        | Command::Dump(_) => anyhow::bail!("not built yet"),
    }
}
