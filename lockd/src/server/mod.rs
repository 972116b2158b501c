//! The lock server: the pure lock state machine, the sans-IO core that ties it
//! to client sessions, and the tokio daemon.

mod core;
mod daemon;
mod locks;

pub use self::core::{ConnId, ServerConfig, ServerCore, ServerInput, ServerOutput};
pub use daemon::{run, DaemonHandle};
pub use locks::{ClientId, LockAction, LockServer, LOCKS_MAX};
