//! The `scoutfs-ublk` command's subcommands, one module each, and what the
//! benchmark programs share. `cli` holds the argument definitions.

pub mod cli;
pub mod cmd;
