//! NBD wire format: magic numbers, option and command codes, and the
//! framing of requests and replies (the "fixed newstyle" protocol of
//! NetworkBlockDevice/nbd `doc/proto.md`). Everything on the wire is
//! big-endian (network order), fixed width.
//!
//! Parsing follows mini-redis: `parse_request` is given whatever bytes are
//! buffered and answers "incomplete" (wait for more), a request, or an error
//! that closes the connection. It never panics on any input.

/// "NBDMAGIC": the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": follows NBD_MAGIC, and starts every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Starts every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Starts a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Starts a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server, u16).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
// Client flags (u32).
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;
pub const CLIENT_FLAGS_KNOWN: u32 = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;

// Info types carried by REP_INFO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags (u16), sent with the export size.
pub const TX_HAS_FLAGS: u16 = 1 << 0;
pub const TX_SEND_FLUSH: u16 = 1 << 2;
pub const TX_SEND_FUA: u16 = 1 << 3;
pub const TX_SEND_TRIM: u16 = 1 << 5;
pub const TX_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TX_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TX_SEND_FAST_ZERO: u16 = 1 << 11;

// Command flags (u16).
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// BLOCK_STATUS: one descriptor only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// WRITE_ZEROES: only if faster than writing zeroes, else fail at once.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Command types (u16).
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Structured reply chunk flags and types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

/// The one metadata context served: which ranges are allocated. Its id,
/// chosen by the server, is the same on every connection.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;
/// base:allocation status bits: unallocated, and reads as zeros.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

// Errors on the wire (Linux values, as the protocol defines them).
pub const NBD_EIO: u32 = 5;
pub const NBD_ENOMEM: u32 = 12;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_EOVERFLOW: u32 = 75;
pub const NBD_ENOTSUP: u32 = 95;

/// Request header: magic u32, flags u16, type u16, cookie u64, offset u64, length u32.
pub const REQUEST_HEADER_BYTES: usize = 28;
/// Simple reply: magic u32, error u32, cookie u64.
pub const SIMPLE_REPLY_BYTES: usize = 16;
/// Structured reply chunk header: magic u32, flags u16, type u16, cookie u64, length u32.
pub const STRUCTURED_HEADER_BYTES: usize = 20;

/// Largest READ or WRITE payload: bounds the memory one request can pin
/// (the kernel's nbd client and qemu never send more than 32 MiB).
pub const PAYLOAD_BYTES_MAX: u32 = 32 << 20;

/// A transmission request, as parsed from its 28-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Bytes of payload that follow the header on the wire.
    pub fn payload_bytes(&self) -> u32 {
        if self.kind == CMD_WRITE {
            self.length
        } else {
            0
        }
    }

    pub fn encode(&self) -> [u8; REQUEST_HEADER_BYTES] {
        let mut out = [0u8; REQUEST_HEADER_BYTES];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// Why a request header cannot be served; each closes the connection,
/// because after it the byte stream cannot be trusted to be in frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad request magic {0:#010x}")]
    BadMagic(u32),
    #[error("write payload of {0} bytes exceeds the {PAYLOAD_BYTES_MAX}-byte limit")]
    PayloadTooLarge(u32),
}

/// Parses one request header from the front of `buf`. `Ok(None)` means more
/// bytes are needed. A READ longer than `PAYLOAD_BYTES_MAX` parses (it gets
/// an error reply, the stream stays in frame); an oversized WRITE does not,
/// because its payload cannot be skipped safely.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, FrameError> {
    let Some(header) = buf.get(..REQUEST_HEADER_BYTES) else {
        return Ok(None);
    };
    let magic = be_u32(&header[0..4]);
    if magic != REQUEST_MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let request = Request {
        flags: be_u16(&header[4..6]),
        kind: be_u16(&header[6..8]),
        cookie: be_u64(&header[8..16]),
        offset: be_u64(&header[16..24]),
        length: be_u32(&header[24..28]),
    };
    if request.payload_bytes() > PAYLOAD_BYTES_MAX {
        return Err(FrameError::PayloadTooLarge(request.length));
    }
    Ok(Some(request))
}

pub fn simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_BYTES] {
    let mut out = [0u8; SIMPLE_REPLY_BYTES];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// Header of a structured chunk whose payload is `length` bytes.
pub fn structured_header(
    cookie: u64,
    flags: u16,
    kind: u16,
    length: u32,
) -> [u8; STRUCTURED_HEADER_BYTES] {
    let mut out = [0u8; STRUCTURED_HEADER_BYTES];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

/// A final NBD_REPLY_TYPE_ERROR chunk: errno u32, message length u16, message.
pub fn structured_error(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let message = &message.as_bytes()[..message.len().min(MESSAGE_BYTES_MAX)];
    let payload = 4 + 2 + message.len() as u32;
    let mut out = Vec::with_capacity(STRUCTURED_HEADER_BYTES + payload as usize);
    out.extend_from_slice(&structured_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        payload,
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Error messages sent to clients are cut here (the spec's string bound is 4096).
pub const MESSAGE_BYTES_MAX: usize = 256;

/// An option reply header followed by `data`.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
pub fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any byte string: the parser answers without panicking, and only
        /// claims a request when a whole header with the right magic is there.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match parse_request(&bytes) {
                Ok(None) => prop_assert!(bytes.len() < REQUEST_HEADER_BYTES),
                Ok(Some(r)) => {
                    prop_assert!(bytes.len() >= REQUEST_HEADER_BYTES);
                    prop_assert_eq!(&r.encode()[..], &bytes[..REQUEST_HEADER_BYTES]);
                    prop_assert!(r.payload_bytes() <= PAYLOAD_BYTES_MAX);
                }
                Err(FrameError::BadMagic(m)) => prop_assert_ne!(m, REQUEST_MAGIC),
                Err(FrameError::PayloadTooLarge(len)) => {
                    prop_assert!(len > PAYLOAD_BYTES_MAX);
                    prop_assert_eq!(be_u16(&bytes[6..8]), CMD_WRITE);
                }
            }
        }

        /// Encoding then parsing gives back the same request, and every
        /// shorter prefix is reported incomplete.
        #[test]
        fn encode_parse_roundtrip(flags: u16, kind in 0u16..10, cookie: u64, offset: u64,
                                  length in 0u32..=PAYLOAD_BYTES_MAX, cut in 0usize..28) {
            let r = Request { flags, kind, cookie, offset, length };
            let bytes = r.encode();
            prop_assert_eq!(parse_request(&bytes), Ok(Some(r)));
            prop_assert_eq!(parse_request(&bytes[..cut]), Ok(None));
        }
    }

    #[test]
    fn oversized_write_is_a_frame_error_but_oversized_read_parses() {
        let mut r = Request {
            flags: 0,
            kind: CMD_WRITE,
            cookie: 1,
            offset: 0,
            length: PAYLOAD_BYTES_MAX + 512,
        };
        assert_eq!(
            parse_request(&r.encode()),
            Err(FrameError::PayloadTooLarge(r.length))
        );
        r.kind = CMD_READ;
        assert_eq!(parse_request(&r.encode()), Ok(Some(r)));
    }

    #[test]
    fn structured_error_is_framed_and_bounded() {
        let long = "x".repeat(10_000);
        let chunk = structured_error(9, NBD_EIO, &long);
        assert_eq!(be_u32(&chunk[0..4]), STRUCTURED_REPLY_MAGIC);
        assert_eq!(be_u16(&chunk[6..8]), REPLY_TYPE_ERROR);
        let len = be_u32(&chunk[16..20]) as usize;
        assert_eq!(chunk.len(), STRUCTURED_HEADER_BYTES + len);
        assert_eq!(be_u16(&chunk[24..26]) as usize, MESSAGE_BYTES_MAX);
    }
}
