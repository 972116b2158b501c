//! The NBD front end: serves any `BlockTarget` to NBD clients (qemu, libnbd,
//! fio's nbd engine, the kernel's nbd-client).

mod handshake;
mod proto;
mod server;
mod transmission;

pub use handshake::{Export, HandshakeError, Negotiated, OPTIONS_MAX, OPTION_BYTES_MAX};
pub use proto::{parse_request, FrameError, Request, PAYLOAD_BYTES_MAX};
pub use server::{serve, Address, Listener, CONNECTIONS_MAX, HANDSHAKE_TIMEOUT_MS};
pub use transmission::{ANSWERED_BYTES_MAX, IN_FLIGHT_MAX, PAYLOAD_BYTES_IN_FLIGHT_MAX};

/// The wire constants, for tests that speak raw protocol bytes.
pub mod wire {
    pub use super::proto::*;
}
