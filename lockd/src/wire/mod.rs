//! The bytes on the wire: frame header, commands, payloads and the decoder.
//! `docs/protocol.md` is the specification; each layout is repeated above the
//! code that builds it.

mod frame;
mod message;

pub use frame::{
    decode, Body, Command, DecodeError, ErrorCode, Frame, HEADER_BYTES, PAYLOAD_MAX_BYTES,
};
pub use message::{Greeting, LockMsg, LockRange, Mode, Stats, GREETING_MAGIC, PROTOCOL_VERSION};
