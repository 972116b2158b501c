//! One module per subcommand, plus what they share (`registry` of NBD
//! daemons, `size` parsing, `daemon` forking helpers, `host_space`: room
//! for a sparse pool).

pub mod add;
pub mod bench;
pub mod check;
pub mod daemon;
pub mod del;
pub mod dump;
pub mod host_space;
pub mod list;
pub mod mkfs;
pub mod nbd_daemon;
pub mod registry;
pub mod serve_raw;
pub mod size;
pub mod ublk;
