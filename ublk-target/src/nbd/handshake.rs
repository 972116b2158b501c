//! The fixed newstyle handshake: greeting, client flags, then options until
//! the client picks the export (OPT_GO or OPT_EXPORT_NAME) or leaves.
//!
//! Every option is read whole (its length is bounded) before it is
//! answered; a client that breaks the framing gets an `Err` naming what it
//! did, and the caller closes the connection.

use super::proto::*;
use super::server::CONNECTION_ERRORS;
use log_ratelimit::log_limited;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Options one client may send before choosing an export: a client looping
/// on OPT_LIST forever would otherwise hold a connection slot for nothing.
pub const OPTIONS_MAX: u32 = 64;
/// Largest option payload accepted: an export name (<= 4096 bytes by the
/// spec) plus its length and info requests fit with room to spare.
pub const OPTION_BYTES_MAX: u32 = 8192;

/// What the server tells clients about its one export.
#[derive(Debug, Clone)]
pub struct Export {
    pub name: String,
    pub size_bytes: u64,
    /// Smallest request granularity (sector).
    pub block_min_bytes: u32,
    /// Requests aligned to this are cheapest (the volume's data block).
    pub block_preferred_bytes: u32,
}

impl Export {
    pub fn transmission_flags(&self) -> u16 {
        // Multi-conn is safe: every connection shares one target, and a
        // flush on any of them commits every completed write.
        TX_HAS_FLAGS
            | TX_SEND_FLUSH
            | TX_SEND_FUA
            | TX_SEND_TRIM
            | TX_SEND_WRITE_ZEROES
            | TX_CAN_MULTI_CONN
            | TX_SEND_FAST_ZERO
    }

    /// The default export ("") is this one too, as with qemu-nbd.
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// What a client chose during the handshake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Session {
    /// Structured replies (OPT_STRUCTURED_REPLY).
    pub structured: bool,
    /// The base:allocation metadata context (OPT_SET_META_CONTEXT):
    /// BLOCK_STATUS answers which ranges are holes.
    pub base_allocation: bool,
}

/// The outcome of a completed handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// Enter transmission with what was negotiated.
    Transmission(Session),
    /// The client aborted or asked for an export that does not exist.
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The cause in the message, not as the source (`{:#}` would print
    /// it twice); `From` below.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("client did not set the fixed newstyle flag (flags {0:#x})")]
    NotFixedNewstyle(u32),
    #[error("client sent unknown flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    #[error("option {option} carries {length} bytes, more than the {OPTION_BYTES_MAX}-byte limit")]
    OptionTooLong { option: u32, length: u32 },
    #[error("more than {OPTIONS_MAX} options without choosing an export")]
    TooManyOptions,
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> HandshakeError {
        HandshakeError::Io(e)
    }
}

pub async fn handshake<S>(stream: &mut S, export: &Export) -> Result<Negotiated, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&greeting).await?;
    stream.flush().await?;

    let client_flags = stream.read_u32().await?;
    if client_flags & CLIENT_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::NotFixedNewstyle(client_flags));
    }
    if client_flags & !CLIENT_FLAGS_KNOWN != 0 {
        return Err(HandshakeError::UnknownClientFlags(client_flags));
    }
    let no_zeroes = client_flags & CLIENT_FLAG_NO_ZEROES != 0;

    let mut session = Session::default();
    for _ in 0..OPTIONS_MAX {
        let magic = stream.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(HandshakeError::BadOptionMagic(magic));
        }
        let option = stream.read_u32().await?;
        let length = stream.read_u32().await?;
        if length > OPTION_BYTES_MAX {
            return Err(HandshakeError::OptionTooLong { option, length });
        }
        let mut data = vec![0u8; length as usize];
        stream.read_exact(&mut data).await?;

        let step = answer_option(option, &data, export, &mut session, no_zeroes);
        stream.write_all(&step.reply).await?;
        stream.flush().await?;
        if let Some(outcome) = step.outcome {
            return Ok(outcome);
        }
    }
    Err(HandshakeError::TooManyOptions)
}

struct Step {
    reply: Vec<u8>,
    outcome: Option<Negotiated>,
}

fn answer_option(
    option: u32,
    data: &[u8],
    export: &Export,
    session: &mut Session,
    no_zeroes: bool,
) -> Step {
    match option {
        OPT_EXPORT_NAME => {
            if !export.matches(data) {
                // No error reply exists for this option: the spec says close.
                log_limited!(
                    CONNECTION_ERRORS,
                    log::Level::Warn,
                    "nbd: client asked for unknown export {:?}",
                    String::from_utf8_lossy(data)
                );
                return Step {
                    reply: Vec::new(),
                    outcome: Some(Negotiated::Closed),
                };
            }
            let mut reply = Vec::with_capacity(10 + 124);
            reply.extend_from_slice(&export.size_bytes.to_be_bytes());
            reply.extend_from_slice(&export.transmission_flags().to_be_bytes());
            if !no_zeroes {
                reply.extend_from_slice(&[0u8; 124]);
            }
            Step {
                reply,
                outcome: Some(Negotiated::Transmission(*session)),
            }
        }
        OPT_ABORT => Step {
            reply: option_reply(option, REP_ACK, &[]),
            outcome: Some(Negotiated::Closed),
        },
        OPT_LIST => {
            if !data.is_empty() {
                return error_reply(option, REP_ERR_INVALID, "OPT_LIST carries no data");
            }
            let mut server = Vec::with_capacity(4 + export.name.len());
            server.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
            server.extend_from_slice(export.name.as_bytes());
            let mut reply = option_reply(option, REP_SERVER, &server);
            reply.extend_from_slice(&option_reply(option, REP_ACK, &[]));
            Step {
                reply,
                outcome: None,
            }
        }
        OPT_STRUCTURED_REPLY => {
            if !data.is_empty() {
                return error_reply(
                    option,
                    REP_ERR_INVALID,
                    "OPT_STRUCTURED_REPLY carries no data",
                );
            }
            session.structured = true;
            Step {
                reply: option_reply(option, REP_ACK, &[]),
                outcome: None,
            }
        }
        OPT_INFO | OPT_GO => answer_info(option, data, export, *session),
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            answer_meta_context(option, data, export, session)
        }
        _ => error_reply(option, REP_ERR_UNSUP, "option not supported"),
    }
}

/// OPT_INFO / OPT_GO data: name length u32, name, count u16, count x info type u16.
fn answer_info(option: u32, data: &[u8], export: &Export, session: Session) -> Step {
    let Some(name) = parse_info_request(data) else {
        return error_reply(option, REP_ERR_INVALID, "malformed info request");
    };
    if !export.matches(name) {
        return error_reply(option, REP_ERR_UNKNOWN, "no such export");
    }
    let mut info_export = Vec::with_capacity(12);
    info_export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    info_export.extend_from_slice(&export.size_bytes.to_be_bytes());
    info_export.extend_from_slice(&export.transmission_flags().to_be_bytes());

    let mut info_name = Vec::with_capacity(2 + export.name.len());
    info_name.extend_from_slice(&INFO_NAME.to_be_bytes());
    info_name.extend_from_slice(export.name.as_bytes());

    // Sent whether asked or not: a client that ignores it still gets EINVAL
    // for a misaligned request, never a wrong answer.
    let mut info_block = Vec::with_capacity(14);
    info_block.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    info_block.extend_from_slice(&export.block_min_bytes.to_be_bytes());
    info_block.extend_from_slice(&export.block_preferred_bytes.to_be_bytes());
    info_block.extend_from_slice(&PAYLOAD_BYTES_MAX.to_be_bytes());

    let mut reply = option_reply(option, REP_INFO, &info_export);
    reply.extend_from_slice(&option_reply(option, REP_INFO, &info_name));
    reply.extend_from_slice(&option_reply(option, REP_INFO, &info_block));
    reply.extend_from_slice(&option_reply(option, REP_ACK, &[]));
    let outcome = (option == OPT_GO).then_some(Negotiated::Transmission(session));
    Step { reply, outcome }
}

/// OPT_LIST_META_CONTEXT / OPT_SET_META_CONTEXT data: export name length
/// u32, name, query count u32, count x (query length u32, query). The one
/// context served is base:allocation: LIST names it for no query, for
/// "base:" and for itself; SET selects it when asked for by name (and
/// needs structured replies, which carry BLOCK_STATUS answers). A SET
/// replaces the selection, so one asking for nothing we serve clears it.
fn answer_meta_context(option: u32, data: &[u8], export: &Export, session: &mut Session) -> Step {
    let Some((name, queries)) = parse_meta_context_request(data) else {
        return error_reply(option, REP_ERR_INVALID, "malformed meta context request");
    };
    if !export.matches(name) {
        return error_reply(option, REP_ERR_UNKNOWN, "no such export");
    }
    let set = option == OPT_SET_META_CONTEXT;
    if set && !session.structured {
        return error_reply(option, REP_ERR_INVALID, "structured replies come first");
    }
    let listed = |query: &[u8]| query == BASE_ALLOCATION.as_bytes() || (!set && query == b"base:");
    let chosen = if queries.is_empty() {
        !set
    } else {
        queries.iter().any(|query| listed(query))
    };
    if set {
        session.base_allocation = chosen;
    }
    let mut reply = Vec::new();
    if chosen {
        let mut context = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
        context.extend_from_slice(BASE_ALLOCATION.as_bytes());
        reply.extend_from_slice(&option_reply(option, REP_META_CONTEXT, &context));
    }
    reply.extend_from_slice(&option_reply(option, REP_ACK, &[]));
    Step {
        reply,
        outcome: None,
    }
}

/// The export name and the queries, when every length inside agrees with
/// `data.len()`.
fn parse_meta_context_request(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let (name, mut rest) = split_name(data)?;
    let count = be_u32(rest.get(0..4)?);
    rest = &rest[4..];
    // Each query takes at least its 4-byte length: a count beyond what the
    // data can hold is refused before anything is allocated for it.
    if count as usize > rest.len() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = be_u32(rest.get(0..4)?) as usize;
        queries.push(rest.get(4..4usize.checked_add(len)?)?);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some((name, queries))
}

/// The export name that starts an option's data (length u32, then the
/// name) and the bytes after it; None when the length overruns the data.
fn split_name(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let name_len = be_u32(data.get(0..4)?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    Some((name, &data[4 + name_len..]))
}

/// Returns the export name when the lengths inside agree with `data.len()`.
fn parse_info_request(data: &[u8]) -> Option<&[u8]> {
    let (name, rest) = split_name(data)?;
    let count = be_u16(rest.get(0..2)?) as usize;
    (rest.len() == 2 + 2 * count).then_some(name)
}

fn error_reply(option: u32, reply: u32, message: &str) -> Step {
    Step {
        reply: option_reply(option, reply, message.as_bytes()),
        outcome: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::proto::FrameError;
    use crate::nbd::transmission::TransmissionError;
    use crate::test_support::with_sources;

    #[test]
    fn a_connection_error_names_its_cause_once() {
        let reset = || std::io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(
            with_sources(&HandshakeError::from(reset())),
            "i/o: Connection reset by peer (os error 104)"
        );
        assert_eq!(
            with_sources(&TransmissionError::from(reset())),
            "i/o: Connection reset by peer (os error 104)"
        );
        assert_eq!(
            with_sources(&TransmissionError::from(FrameError::BadMagic(7))),
            "bad request magic 0x00000007"
        );
    }

    fn meta_request(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name);
        data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for query in queries {
            data.extend_from_slice(&(query.len() as u32).to_be_bytes());
            data.extend_from_slice(query);
        }
        data
    }

    fn export() -> Export {
        Export {
            name: "scoutfs".into(),
            size_bytes: 1 << 20,
            block_min_bytes: 512,
            block_preferred_bytes: 4096,
        }
    }

    /// The reply types of an option's answer, in order.
    fn reply_types(reply: &[u8]) -> Vec<u32> {
        let mut types = Vec::new();
        let mut rest = reply;
        while !rest.is_empty() {
            types.push(be_u32(&rest[12..16]));
            let len = be_u32(&rest[16..20]) as usize;
            rest = &rest[20 + len..];
        }
        types
    }

    #[test]
    fn meta_context_requests_must_agree_with_their_lengths() {
        let ok = meta_request(b"scoutfs", &[b"base:allocation", b"x"]);
        let (name, queries) = parse_meta_context_request(&ok).unwrap();
        assert_eq!(
            (name, queries),
            (&b"scoutfs"[..], vec![&b"base:allocation"[..], &b"x"[..]])
        );
        assert!(parse_meta_context_request(&ok[..ok.len() - 1]).is_none());
        let mut long = ok.clone();
        long.push(0);
        assert!(parse_meta_context_request(&long).is_none());
        // A query count the data cannot hold is refused, not allocated for.
        let mut hostile = meta_request(b"", &[]);
        hostile[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_context_request(&hostile).is_none());
    }

    #[test]
    fn base_allocation_is_listed_and_set_only_as_the_spec_says() {
        let export = export();
        let mut session = Session::default();
        let all = meta_request(b"scoutfs", &[]);
        let base = meta_request(b"", &[BASE_ALLOCATION.as_bytes()]);
        let other = meta_request(b"scoutfs", &[b"qemu:dirty-bitmap:x"]);
        // LIST with no query and with "base:" names it.
        for data in [&all, &meta_request(b"scoutfs", &[b"base:"])] {
            let step = answer_option(OPT_LIST_META_CONTEXT, data, &export, &mut session, true);
            assert_eq!(reply_types(&step.reply), vec![REP_META_CONTEXT, REP_ACK]);
        }
        // SET before structured replies: refused.
        let step = answer_option(OPT_SET_META_CONTEXT, &base, &export, &mut session, true);
        assert_eq!(reply_types(&step.reply), vec![REP_ERR_INVALID]);
        assert!(!session.base_allocation);
        session.structured = true;
        let step = answer_option(OPT_SET_META_CONTEXT, &base, &export, &mut session, true);
        assert_eq!(reply_types(&step.reply), vec![REP_META_CONTEXT, REP_ACK]);
        assert_eq!(be_u32(&step.reply[20..24]), BASE_ALLOCATION_ID);
        assert!(session.base_allocation);
        // A later SET of nothing we serve replaces the selection.
        let step = answer_option(OPT_SET_META_CONTEXT, &other, &export, &mut session, true);
        assert_eq!(reply_types(&step.reply), vec![REP_ACK]);
        assert!(!session.base_allocation);
        // An unknown export, and malformed data.
        let unknown = meta_request(b"nope", &[BASE_ALLOCATION.as_bytes()]);
        let step = answer_option(OPT_SET_META_CONTEXT, &unknown, &export, &mut session, true);
        assert_eq!(reply_types(&step.reply), vec![REP_ERR_UNKNOWN]);
        let step = answer_option(OPT_SET_META_CONTEXT, &[0, 0], &export, &mut session, true);
        assert_eq!(reply_types(&step.reply), vec![REP_ERR_INVALID]);
    }

    #[test]
    fn info_request_lengths_must_agree() {
        let mut ok = Vec::new();
        ok.extend_from_slice(&7u32.to_be_bytes());
        ok.extend_from_slice(b"scoutfs");
        ok.extend_from_slice(&1u16.to_be_bytes());
        ok.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(parse_info_request(&ok), Some(&b"scoutfs"[..]));
        assert_eq!(parse_info_request(&ok[..ok.len() - 1]), None);
        let mut long = ok.clone();
        long.push(0);
        assert_eq!(parse_info_request(&long), None);
        let mut huge_name = ok.clone();
        huge_name[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_info_request(&huge_name), None);
    }
}
