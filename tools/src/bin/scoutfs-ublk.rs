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
        // The error may have crossed from a forked daemon as text, so it
        // is recognised by fscore's wording rather than by type.
        let in_use = format!("{e:#}").contains(&fscore::Error::InUse.to_string());
        if let Some(pool) = cli.command.pool().filter(|_| in_use) {
            if let Some(device) = cmd::list::serving(&pool.meta) {
                eprintln!("scoutfs-ublk: the pool is served by {device}");
            }
        }
        std::process::exit(1);
    }
}
