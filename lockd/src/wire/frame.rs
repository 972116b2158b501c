//! The frame: a 32-byte header and a payload whose size the command fixes.
//!
//! ```text
//! 0        8        16          24   25    26     28            32
//! | seq    | ack    | request_id|cmd |flags| error| payload_len |  payload ...
//! ```

use super::message::{le_u16, le_u32, le_u64, Greeting, LockMsg, Stats};

/// Size of the fixed header.
pub const HEADER_BYTES: usize = 32;
/// Largest payload any command carries (STAT response, 80 bytes) rounded up:
/// a larger length is refused before any of it is buffered.
pub const PAYLOAD_MAX_BYTES: u32 = 128;
const _: () = assert!(Stats::BYTES <= PAYLOAD_MAX_BYTES && Greeting::BYTES <= PAYLOAD_MAX_BYTES);

/// flags bit 0: this frame answers the request with the same request_id.
const FLAG_RESPONSE: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Command {
    Greeting = 1,
    Heartbeat = 2,
    Lock = 3,
    Invalidate = 4,
    Recover = 5,
    Farewell = 6,
    Stat = 7,
}

impl Command {
    fn from_u8(value: u8) -> Result<Command, DecodeError> {
        Ok(match value {
            1 => Command::Greeting,
            2 => Command::Heartbeat,
            3 => Command::Lock,
            4 => Command::Invalidate,
            5 => Command::Recover,
            6 => Command::Farewell,
            7 => Command::Stat,
            other => return Err(DecodeError::UnknownCommand(other)),
        })
    }

    /// The exact payload length of this command in this direction.
    fn payload_bytes(self, response: bool) -> u32 {
        match self {
            Command::Greeting => Greeting::BYTES,
            Command::Heartbeat | Command::Farewell => 0,
            Command::Lock | Command::Invalidate | Command::Recover => LockMsg::BYTES,
            Command::Stat if response => Stats::BYTES,
            Command::Stat => 0,
        }
    }
}

/// The error field of a response (0 in requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    Ok = 0,
    /// Greeting refused: the peers speak different protocol versions.
    VersionMismatch = 1,
    /// Greeting refused: the peers belong to different clusters.
    ClusterMismatch = 2,
    /// LOCK refused: the range partially overlaps an existing lock's range.
    RangeOverlap = 3,
    /// The request is not valid in the session's state (e.g. a second
    /// outstanding request for one lock, or too many locks).
    InvalidRequest = 4,
    /// RECOVER refused: another holder or a waiter has the lock now.
    RecoverConflict = 5,
}

impl ErrorCode {
    fn from_u16(value: u16) -> Result<ErrorCode, DecodeError> {
        Ok(match value {
            0 => ErrorCode::Ok,
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::ClusterMismatch,
            3 => ErrorCode::RangeOverlap,
            4 => ErrorCode::InvalidRequest,
            5 => ErrorCode::RecoverConflict,
            other => return Err(DecodeError::UnknownError(other)),
        })
    }
}

/// The decoded payload. The rare large payloads are boxed so a frame stays
/// small (72 bytes) in batches and in the sessions' maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Empty,
    Greeting(Box<Greeting>),
    Lock(LockMsg),
    Stats(Box<Stats>),
}

impl Body {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Body::Empty => {}
            Body::Greeting(greeting) => greeting.encode(out),
            Body::Lock(msg) => msg.encode(out),
            Body::Stats(stats) => stats.encode(out),
        }
    }
}

/// One decoded frame. `ack` is stamped when the frame is encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub ack: u64,
    pub request_id: u64,
    pub command: Command,
    pub response: bool,
    pub error: ErrorCode,
    pub body: Body,
}

impl Frame {
    /// Appends the frame to `out` with `ack` as its cumulative ack.
    pub fn encode_into(&self, ack: u64, out: &mut Vec<u8>) {
        let payload_len = self.command.payload_bytes(self.response);
        let start = out.len();
        // Built whole, then appended once: one capacity check per part, not
        // one per field.
        let mut header = [0u8; HEADER_BYTES];
        header[0..8].copy_from_slice(&self.seq.to_le_bytes());
        header[8..16].copy_from_slice(&ack.to_le_bytes());
        header[16..24].copy_from_slice(&self.request_id.to_le_bytes());
        header[24] = self.command as u8;
        header[25] = if self.response { FLAG_RESPONSE } else { 0 };
        header[26..28].copy_from_slice(&(self.error as u16).to_le_bytes());
        header[28..32].copy_from_slice(&payload_len.to_le_bytes());
        out.reserve(HEADER_BYTES + payload_len as usize);
        out.extend_from_slice(&header);
        self.body.encode(out);
        debug_assert_eq!(out.len() - start, HEADER_BYTES + payload_len as usize);
    }

    pub fn lock_msg(&self) -> Option<LockMsg> {
        match self.body {
            Body::Lock(msg) => Some(msg),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown command {0}")]
    UnknownCommand(u8),
    #[error("unknown flags {0:#x}")]
    UnknownFlags(u8),
    #[error("unknown error code {0}")]
    UnknownError(u16),
    #[error("payload length {0} exceeds the maximum {PAYLOAD_MAX_BYTES}")]
    Oversized(u32),
    #[error("payload length {len} is wrong for {command:?} (expected {expected})")]
    BadLength {
        command: Command,
        len: u32,
        expected: u32,
    },
    #[error("unknown lock mode {0}")]
    BadMode(u8),
    #[error("lock range start {start} after end {end}")]
    BadRange { start: u64, end: u64 },
    #[error("nonzero padding in lock payload")]
    NonZeroPadding,
    #[error("bad greeting magic {0:#x}")]
    BadMagic(u64),
    #[error("bad greeting resumed field {0}")]
    BadResumed(u32),
}

/// Decodes the first frame of `buf`.
///
/// `Ok(None)`: not all of the frame is buffered yet (a normal case: read more).
/// `Ok(Some((frame, used)))`: a frame and how many bytes it took.
/// `Err`: the bytes cannot be a frame; the connection must be closed. A header
/// is checked before waiting for its payload, so an oversized or wrong length
/// is refused without buffering it.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let command = Command::from_u8(buf[24])?;
    let flags = buf[25];
    if flags & !FLAG_RESPONSE != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let response = flags & FLAG_RESPONSE != 0;
    let error = ErrorCode::from_u16(le_u16(buf, 26))?;
    let len = le_u32(buf, 28);
    if len > PAYLOAD_MAX_BYTES {
        return Err(DecodeError::Oversized(len));
    }
    let expected = command.payload_bytes(response);
    if len != expected {
        return Err(DecodeError::BadLength {
            command,
            len,
            expected,
        });
    }
    let total = HEADER_BYTES + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = &buf[HEADER_BYTES..total];
    let body = match command {
        Command::Greeting => Body::Greeting(Box::new(Greeting::decode(payload)?)),
        Command::Heartbeat | Command::Farewell => Body::Empty,
        Command::Lock | Command::Invalidate | Command::Recover => {
            Body::Lock(LockMsg::decode(payload)?)
        }
        Command::Stat if response => Body::Stats(Box::new(Stats::decode(payload))),
        Command::Stat => Body::Empty,
    };
    let frame = Frame {
        seq: le_u64(buf, 0),
        ack: le_u64(buf, 8),
        request_id: le_u64(buf, 16),
        command,
        response,
        error,
        body,
    };
    Ok(Some((frame, total)))
}
