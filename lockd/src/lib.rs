//! lockd: cluster locks for scoutfs-ublk nodes. See `docs/protocol.md`.
//!
//! Map of the modules, bottom to top:
//! - [`wire`]: the frame header, payloads and the decoder (bytes only).
//! - [`net`]: the per-peer session state (seq/ack, request ids, resend) as a
//!   sans-IO state machine, and the tokio reader/writer tasks that move frames.
//! - [`server`]: the lock server state machine ([`server::LockServer`]), the
//!   server core that ties sessions to it ([`server::ServerCore`], sans-IO),
//!   and the tokio daemon around them.
//! - [`client`]: the sans-IO client core ([`client::ClientCore`]) and the async
//!   client library with guards, an LRU cache and an invalidation callback.

pub mod client;
mod hash;
pub mod net;
pub mod server;
pub mod wire;
