//! The `scoutfs-ublk` command: mkfs, add, del, list, recover, check, dump.

use clap::Parser;
use tools::cli::{Cli, Command};
use tools::cmd;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Mkfs(args) => cmd::mkfs::run(args),
        Command::Add(args) => cmd::add::run(args),
        Command::Del(args) => cmd::del::run(args),
        Command::List(args) => cmd::list::run(args),
        Command::Recover(args) => cmd::ublk::recover(args),
        Command::Check(args) => cmd::check::run(args),
        Command::Dump(args) => cmd::dump::run(args),
        Command::Bench(args) => cmd::bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("scoutfs-ublk: {e:#}");
        std::process::exit(1);
    }
}
