//! Payload types: lock modes, key ranges and the fixed-size payload layouts.

use super::frame::DecodeError;

/// "LOCKDPRO" as a little-endian u64: the first field of every greeting.
pub const GREETING_MAGIC: u64 = u64::from_le_bytes(*b"LOCKDPRO");
/// The protocol version this code speaks; a peer with another one is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Lock modes as in scoutfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Mode {
    /// Holds nothing; compatible with everything.
    Null = 0,
    /// Shared among readers.
    Read = 1,
    /// Shared among writers that never read.
    WriteOnly = 2,
    /// Exclusive.
    Write = 3,
}

impl Mode {
    pub fn from_u8(value: u8) -> Result<Mode, DecodeError> {
        Ok(match value {
            0 => Mode::Null,
            1 => Mode::Read,
            2 => Mode::WriteOnly,
            3 => Mode::Write,
            other => return Err(DecodeError::BadMode(other)),
        })
    }

    /// Whether two holders (on overlapping ranges) may hold these modes at once.
    #[inline]
    pub fn compatible(self, other: Mode) -> bool {
        matches!(
            (self, other),
            (Mode::Null, _)
                | (_, Mode::Null)
                | (Mode::Read, Mode::Read)
                | (Mode::WriteOnly, Mode::WriteOnly)
        )
    }

    /// Whether holding `self` already gives everything `wanted` gives.
    #[inline]
    pub fn covers(self, wanted: Mode) -> bool {
        self == wanted
            || wanted == Mode::Null
            || (self == Mode::Write && matches!(wanted, Mode::Read | Mode::WriteOnly))
    }

    /// The mode a holder of `held` must drop to so that `wanted` can be granted:
    /// WRITE drops to READ for a reader, everything else drops to NULL.
    pub fn invalidation_target(held: Mode, wanted: Mode) -> Mode {
        if held == Mode::Write && wanted == Mode::Read {
            Mode::Read
        } else {
            Mode::Null
        }
    }
}

/// A lock's name: an inclusive range `[start, end]` of a zone's u64 key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockRange {
    pub zone: u64,
    pub start: u64,
    pub end: u64,
}

impl LockRange {
    pub fn new(zone: u64, start: u64, end: u64) -> LockRange {
        LockRange { zone, start, end }
    }

    pub fn overlaps(&self, other: &LockRange) -> bool {
        self.zone == other.zone && self.start <= other.end && other.start <= self.end
    }
}

/// Payload of LOCK, INVALIDATE and RECOVER, requests and responses alike.
///
/// ```text
/// 0        8        16       24   25         32
/// | zone   | start  | end    |mode| zero x7  |
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockMsg {
    pub range: LockRange,
    pub mode: Mode,
}

impl LockMsg {
    pub const BYTES: u32 = 32;

    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut bytes = [0u8; Self::BYTES as usize];
        bytes[0..8].copy_from_slice(&self.range.zone.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.range.start.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.range.end.to_le_bytes());
        bytes[24] = self.mode as u8;
        out.extend_from_slice(&bytes);
    }

    #[inline]
    pub fn decode(bytes: &[u8]) -> Result<LockMsg, DecodeError> {
        debug_assert_eq!(bytes.len(), Self::BYTES as usize);
        let range = LockRange {
            zone: le_u64(bytes, 0),
            start: le_u64(bytes, 8),
            end: le_u64(bytes, 16),
        };
        if range.start > range.end {
            return Err(DecodeError::BadRange {
                start: range.start,
                end: range.end,
            });
        }
        // The mode byte and the seven padding bytes as one word.
        let tail = le_u64(bytes, 24);
        let mode = Mode::from_u8(tail as u8)?;
        if tail >> 8 != 0 {
            return Err(DecodeError::NonZeroPadding);
        }
        Ok(LockMsg { range, mode })
    }
}

/// Payload of GREETING, both directions.
///
/// ```text
/// 0       8       12      16          24         32             40         48
/// | magic |version|resumed| cluster_id| client_id| server_epoch | recv_seq |
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Greeting {
    pub magic: u64,
    pub version: u32,
    /// Server to client: 1 when the client's session was resumed, 0 when new.
    pub resumed: u32,
    pub cluster_id: u64,
    pub client_id: u64,
    /// Client: the epoch of the server it last had a session with (0: none).
    /// Server: its own epoch, chosen at start.
    pub server_epoch: u64,
    /// The highest sequenced frame received from the peer in this session.
    pub recv_seq: u64,
}

impl Greeting {
    pub const BYTES: u32 = 48;

    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.resumed.to_le_bytes());
        out.extend_from_slice(&self.cluster_id.to_le_bytes());
        out.extend_from_slice(&self.client_id.to_le_bytes());
        out.extend_from_slice(&self.server_epoch.to_le_bytes());
        out.extend_from_slice(&self.recv_seq.to_le_bytes());
    }

    #[inline]
    pub fn decode(bytes: &[u8]) -> Result<Greeting, DecodeError> {
        let greeting = Greeting {
            magic: le_u64(bytes, 0),
            version: le_u32(bytes, 8),
            resumed: le_u32(bytes, 12),
            cluster_id: le_u64(bytes, 16),
            client_id: le_u64(bytes, 24),
            server_epoch: le_u64(bytes, 32),
            recv_seq: le_u64(bytes, 40),
        };
        if greeting.magic != GREETING_MAGIC {
            return Err(DecodeError::BadMagic(greeting.magic));
        }
        if greeting.resumed > 1 {
            return Err(DecodeError::BadResumed(greeting.resumed));
        }
        Ok(greeting)
    }
}

/// Payload of a STAT response: ten u64 counters in this order.
///
/// ```text
/// 0        8         16      24       32      40            48     56     64      72
/// |clients |sessions |locks  |waiters |grants |invalidations|p50_us|p99_us|p999_us|max_us|
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub clients_connected: u64,
    pub sessions: u64,
    pub locks: u64,
    pub waiters: u64,
    pub grants_total: u64,
    pub invalidations_total: u64,
    pub grant_p50_us: u64,
    pub grant_p99_us: u64,
    pub grant_p999_us: u64,
    pub grant_max_us: u64,
}

impl Stats {
    pub const BYTES: u32 = 80;

    fn fields(&self) -> [u64; 10] {
        [
            self.clients_connected,
            self.sessions,
            self.locks,
            self.waiters,
            self.grants_total,
            self.invalidations_total,
            self.grant_p50_us,
            self.grant_p99_us,
            self.grant_p999_us,
            self.grant_max_us,
        ]
    }

    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) {
        for field in self.fields() {
            out.extend_from_slice(&field.to_le_bytes());
        }
    }

    #[inline]
    pub fn decode(bytes: &[u8]) -> Stats {
        let f = |i: usize| le_u64(bytes, i * 8);
        Stats {
            clients_connected: f(0),
            sessions: f(1),
            locks: f(2),
            waiters: f(3),
            grants_total: f(4),
            invalidations_total: f(5),
            grant_p50_us: f(6),
            grant_p99_us: f(7),
            grant_p999_us: f(8),
            grant_max_us: f(9),
        }
    }
}

pub(crate) fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}
