//! The fixed newstyle handshake: greeting, client flags, then options until
//! the client picks the export (OPT_GO or OPT_EXPORT_NAME) or leaves.
//!
//! Every option is read whole (its length is bounded) before it is
//! answered; a client that breaks the framing gets an `Err` naming what it
//! did, and the caller closes the connection.

use super::proto::*;
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
    }

    /// The default export ("") is this one too, as with qemu-nbd.
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// The outcome of a completed handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// Enter transmission; `structured` replies were negotiated.
    Transmission { structured: bool },
    /// The client aborted or asked for an export that does not exist.
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
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

    let mut structured = false;
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

        let step = answer_option(option, &data, export, &mut structured, no_zeroes);
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
    structured: &mut bool,
    no_zeroes: bool,
) -> Step {
    let go = |structured: bool| Some(Negotiated::Transmission { structured });
    match option {
        OPT_EXPORT_NAME => {
            if !export.matches(data) {
                // No error reply exists for this option: the spec says close.
                log::warn!(
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
                outcome: go(*structured),
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
            *structured = true;
            Step {
                reply: option_reply(option, REP_ACK, &[]),
                outcome: None,
            }
        }
        OPT_INFO | OPT_GO => answer_info(option, data, export, *structured),
        _ => error_reply(option, REP_ERR_UNSUP, "option not supported"),
    }
}

/// OPT_INFO / OPT_GO data: name length u32, name, count u16, count x info type u16.
fn answer_info(option: u32, data: &[u8], export: &Export, structured: bool) -> Step {
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
    let outcome = (option == OPT_GO).then_some(Negotiated::Transmission { structured });
    Step { reply, outcome }
}

/// Returns the export name when the lengths inside agree with `data.len()`.
fn parse_info_request(data: &[u8]) -> Option<&[u8]> {
    let name_len = be_u32(data.get(0..4)?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
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
