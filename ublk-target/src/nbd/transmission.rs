//! The transmission phase of one connection: a reader that frames requests
//! and starts one task per request, and a writer that sends the replies in
//! the order the requests complete (pipelined requests are answered out of
//! order, each reply carrying its request's cookie). A write without FUA is
//! answered as soon as the volume accepts it, before its data lands
//! (`BlockTarget::write_answering`; docs/volume.md).
//!
//! At most `IN_FLIGHT_MAX` requests, holding at most
//! `PAYLOAD_BYTES_IN_FLIGHT_MAX` bytes of payload, run at once: the reader
//! stops reading until one finishes, so a client cannot make the server
//! buffer without bound. The writer batches the replies that are ready
//! into one write.

use super::handshake::Session;
use super::proto::*;
use crate::aligned::AlignedBuf;
use crate::target::{BlockTarget, TargetError};
use log_ratelimit::{log_limited, LogLimit};
use std::rc::Rc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Requests one connection may have in flight: above the kernel nbd
/// client's and fio's usual queue depths (32-128). The memory their
/// payloads pin is bounded apart (`PAYLOAD_BYTES_IN_FLIGHT_MAX`).
pub const IN_FLIGHT_MAX: usize = 128;
/// Payload bytes one connection's requests may hold at once: write data
/// read from the socket and not yet done, read data not yet sent. A
/// request waits for room before its payload is read (a write) or its
/// buffer is allocated (a read). Without it, 128 requests of 32 MiB would
/// let one client pin 4 GiB. Twice the largest payload: one such request
/// always fits, and 1-2 MiB requests (qemu-img, nbdcopy) keep 32-64 in
/// flight.
pub const PAYLOAD_BYTES_IN_FLIGHT_MAX: usize = 2 * PAYLOAD_BYTES_MAX as usize;
/// Payload bytes of one connection's writes answered before their data
/// landed (each holds its buffer until then). Past it, writes are answered
/// when done: with 1 MiB writes and the client's slots freed by early
/// answers, the daemon's peak RSS went from 70 to 173 MiB without it.
pub const ANSWERED_BYTES_MAX: usize = 8 << 20;
/// Bytes buffered from the socket per read syscall (many small requests per read).
const READ_BUFFER_BYTES: usize = 256 << 10;
/// Bytes of replies gathered before a write syscall.
const WRITE_BUFFER_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TransmissionError {
    /// The cause in the message, not as the source (`{:#}` would print
    /// it twice); `From` below.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("client closed the connection in the middle of a request")]
    Truncated,
}

impl From<std::io::Error> for TransmissionError {
    fn from(e: std::io::Error) -> TransmissionError {
        TransmissionError::Io(e)
    }
}

/// Reply header bytes, inline up to a structured read reply's header (20
/// bytes and the offset): no allocation per reply.
type ReplyHeader = smallvec::SmallVec<[u8; 32]>;

/// A reply ready to send: header bytes, then an optional read payload
/// (with its room in the connection's payload bytes, given back once it
/// is sent).
struct Reply {
    header: ReplyHeader,
    data: Option<(AlignedBuf, Option<OwnedSemaphorePermit>)>,
}

/// Serves requests until the client sends DISC or closes, a framing error,
/// or `shutdown` becomes true (then in-flight requests finish first).
pub async fn transmission<R, W, T>(
    reader: R,
    writer: W,
    target: Rc<T>,
    session: Session,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), TransmissionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
    T: BlockTarget + 'static,
{
    let structured = session.structured;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let in_flight = std::sync::Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let payload_room = std::sync::Arc::new(Semaphore::new(PAYLOAD_BYTES_IN_FLIGHT_MAX));
    let (replies, reply_queue) = mpsc::channel::<Reply>(IN_FLIGHT_MAX);
    let writer_task = tokio::task::spawn_local(write_replies(writer, reply_queue));
    // One wait for the whole connection, polled before each header (not a
    // new waiter, and a random branch order, per request).
    let mut stop = std::pin::pin!(shutdown.wait_for(|stop| *stop));
    let answered_bytes = Rc::new(std::cell::Cell::new(0usize));

    let result = loop {
        let mut header = [0u8; REQUEST_HEADER_BYTES];
        let read = tokio::select! {
            biased;
            _ = &mut stop => break Ok(()),
            read = read_header(&mut reader, &mut header) => read,
        };
        match read {
            Ok(true) => {}
            Ok(false) => break Ok(()), // closed between requests: a normal end
            Err(e) => break Err(e),
        }
        let request = match parse_request(&header) {
            Ok(Some(request)) => request,
            Ok(None) => unreachable!("a whole header is buffered"),
            Err(e) => {
                if let FrameError::PayloadTooLarge(_) = e {
                    let cookie = be_u64(&header[8..16]);
                    let reply =
                        error_reply(cookie, structured, &TargetError::Invalid(e.to_string()));
                    let _ = replies.send(reply).await;
                }
                break Err(e.into());
            }
        };
        if request.kind == CMD_DISC {
            break Ok(());
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        // A longer read is refused (execute_read) and needs no room.
        let payload_bytes = match request.kind {
            CMD_WRITE | CMD_READ => request.length.min(PAYLOAD_BYTES_MAX),
            _ => 0,
        };
        let room = payload_room
            .clone()
            .acquire_many_owned(payload_bytes)
            .await
            .expect("semaphore never closed");
        let payload = if request.kind == CMD_WRITE {
            let mut buf = AlignedBuf::reuse(request.length as usize);
            if let Err(e) = reader.read_exact(&mut buf).await {
                break Err(truncated(e));
            }
            Some(buf)
        } else {
            None
        };
        let target = target.clone();
        let replies = replies.clone();
        let answer_early = request.kind == CMD_WRITE
            && request.flags & CMD_FLAG_FUA == 0
            && answered_bytes.get() + request.length as usize <= ANSWERED_BYTES_MAX;
        if answer_early {
            answered_bytes.set(answered_bytes.get() + request.length as usize);
        }
        let answered_bytes = answered_bytes.clone();
        tokio::task::spawn_local(async move {
            if answer_early {
                let data = payload.expect("a write carries its payload");
                write_answering_early(&*target, request, &data, structured, &replies).await;
                answered_bytes.set(answered_bytes.get() - data.len());
            } else {
                let mut reply = execute(&*target, request, payload, session).await;
                if let Some((_, held)) = &mut reply.data {
                    // A read's buffer: its room is given back once sent.
                    *held = Some(room);
                }
                // The writer is gone only when the client is: nothing to tell.
                let _ = replies.send(reply).await;
            }
            // Held until the write is done, answered or not: the bound on
            // requests in flight covers writes answered early.
            drop(permit);
        });
    };
    // Every request task holds a sender: the writer ends after the last reply.
    drop(replies);
    let written = writer_task.await.expect("reply writer does not panic");
    result?;
    written
}

/// Reads one request header. `Ok(false)`: the client closed cleanly before it.
async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
    header: &mut [u8; REQUEST_HEADER_BYTES],
) -> Result<bool, TransmissionError> {
    let mut filled = 0;
    while filled < header.len() {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(false)
            } else {
                Err(TransmissionError::Truncated)
            };
        }
        filled += n;
    }
    Ok(true)
}

fn truncated(e: std::io::Error) -> TransmissionError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        TransmissionError::Truncated
    } else {
        TransmissionError::Io(e)
    }
}

/// A write without FUA: answered as soon as the target accepts it
/// (`BlockTarget::write_answering`), done when this returns.
async fn write_answering_early<T: BlockTarget>(
    target: &T,
    request: Request,
    data: &[u8],
    structured: bool,
    replies: &mpsc::Sender<Reply>,
) {
    let (answer, answered) = futures::channel::oneshot::channel();
    let write = target.write_answering(request.offset, data, answer);
    let reply = async {
        let result = answered
            .await
            .unwrap_or_else(|_| Err(TargetError::Io("the write was dropped unanswered".into())));
        let _ = replies
            .send(result_reply(request.cookie, structured, result))
            .await;
    };
    futures::join!(write, reply);
}

async fn execute<T: BlockTarget>(
    target: &T,
    request: Request,
    payload: Option<AlignedBuf>,
    session: Session,
) -> Reply {
    let structured = session.structured;
    let cookie = request.cookie;
    let offset = request.offset;
    let length = request.length as u64;
    let result = match request.kind {
        CMD_READ => return execute_read(target, request, structured).await,
        CMD_BLOCK_STATUS if session.base_allocation => {
            return execute_block_status(target, request).await
        }
        CMD_BLOCK_STATUS => Err(TargetError::Invalid(
            "BLOCK_STATUS without the base:allocation context negotiated".into(),
        )),
        CMD_WRITE => {
            let data = payload.expect("a write carries its payload");
            target
                .write(offset, &data, request.flags & CMD_FLAG_FUA != 0)
                .await
        }
        CMD_FLUSH => target.flush().await,
        CMD_TRIM => target.discard(offset, length).await,
        // A fast zero (a client choosing between zeroing now and writing
        // zeroes itself) is an unmap, which only changes the map; zeroes
        // that must stay allocated (NO_HOLE) cost a write, so it fails at
        // once with ENOTSUP, as the protocol asks.
        CMD_WRITE_ZEROES
            if request.flags & (CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE)
                == CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE =>
        {
            Err(TargetError::NotSupported)
        }
        CMD_WRITE_ZEROES => {
            let may_unmap = request.flags & CMD_FLAG_NO_HOLE == 0;
            let zeroed = target.write_zeroes(offset, length, may_unmap).await;
            match zeroed {
                Ok(()) if request.flags & CMD_FLAG_FUA != 0 => target.flush().await,
                other => other,
            }
        }
        other => Err(TargetError::Invalid(format!(
            "unknown command type {other}"
        ))),
    };
    result_reply(cookie, structured, result)
}

fn result_reply(cookie: u64, structured: bool, result: Result<(), TargetError>) -> Reply {
    match result {
        Ok(()) => Reply {
            header: simple_reply(cookie, 0).as_slice().into(),
            data: None,
        },
        Err(e) => error_reply(cookie, structured, &e),
    }
}

async fn execute_read<T: BlockTarget>(target: &T, request: Request, structured: bool) -> Reply {
    let cookie = request.cookie;
    if request.length > PAYLOAD_BYTES_MAX {
        let e = TargetError::Invalid(format!(
            "read of {} bytes exceeds the {PAYLOAD_BYTES_MAX}-byte limit",
            request.length
        ));
        return error_reply(cookie, structured, &e);
    }
    // The target fills all of it (BlockTarget::read).
    let mut buf = AlignedBuf::reuse(request.length as usize);
    if let Err(e) = target.read(request.offset, &mut buf).await {
        return error_reply(cookie, structured, &e);
    }
    if !structured {
        return Reply {
            header: simple_reply(cookie, 0).as_slice().into(),
            data: Some((buf, None)),
        };
    }
    if buf.is_empty() {
        // An OFFSET_DATA chunk may not be empty: a lone NONE chunk ends it.
        return Reply {
            header: structured_header(cookie, REPLY_FLAG_DONE, 0, 0)
                .as_slice()
                .into(),
            data: None,
        };
    }
    let mut header: ReplyHeader = structured_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        request.length + 8,
    )
    .as_slice()
    .into();
    header.extend_from_slice(&request.offset.to_be_bytes());
    Reply {
        header,
        data: Some((buf, None)),
    }
}

/// BLOCK_STATUS for base:allocation (negotiated, so replies are
/// structured): one chunk of the context id and (length, status)
/// descriptors from the request's offset on, for as much of the range as
/// the target answers (at least one descriptor; one only with REQ_ONE).
async fn execute_block_status<T: BlockTarget>(target: &T, request: Request) -> Reply {
    let cookie = request.cookie;
    if request.length == 0 {
        let e = TargetError::Invalid("BLOCK_STATUS of zero bytes".into());
        return error_reply(cookie, true, &e);
    }
    let runs = match target
        .allocation(request.offset, request.length.into())
        .await
    {
        Ok(runs) => runs,
        Err(e) => return error_reply(cookie, true, &e),
    };
    let take = if request.flags & CMD_FLAG_REQ_ONE != 0 {
        1
    } else {
        runs.len()
    };
    let payload_bytes = 4 + 8 * take;
    let mut header: ReplyHeader = structured_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        payload_bytes as u32,
    )
    .as_slice()
    .into();
    header.reserve(payload_bytes);
    header.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for run in runs.iter().take(take) {
        let status = if run.hole { STATE_HOLE | STATE_ZERO } else { 0 };
        // Within the request's u32 length (the target answers no more).
        header.extend_from_slice(&(run.bytes as u32).to_be_bytes());
        header.extend_from_slice(&status.to_be_bytes());
    }
    Reply { header, data: None }
}

/// A client can fail every request it sends (out of range, say).
static REQUEST_ERRORS: LogLimit = LogLimit::new("nbd: failed requests");

/// The one place a target error becomes an NBD errno.
fn error_reply(cookie: u64, structured: bool, e: &TargetError) -> Reply {
    log_limited!(
        REQUEST_ERRORS,
        log::Level::Warn,
        "nbd: request {cookie:#x} failed: {e}"
    );
    let errno = match e {
        TargetError::Invalid(_) => NBD_EINVAL,
        TargetError::NoSpace => NBD_ENOSPC,
        TargetError::Io(_) => NBD_EIO,
        TargetError::NotSupported => NBD_ENOTSUP,
    };
    let header = if structured {
        structured_error(cookie, errno, &e.to_string()).into()
    } else {
        simple_reply(cookie, errno).as_slice().into()
    };
    Reply { header, data: None }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    writer: W,
    mut queue: mpsc::Receiver<Reply>,
) -> Result<(), TransmissionError> {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    while let Some(mut reply) = queue.recv().await {
        loop {
            writer.write_all(&reply.header).await?;
            if let Some((data, _)) = &reply.data {
                writer.write_all(data).await?;
            }
            match queue.try_recv() {
                Ok(next) => reply = next,
                Err(_) => break,
            }
        }
        writer.flush().await?;
    }
    writer.shutdown().await.or_else(ignore_not_connected)?;
    Ok(())
}

fn ignore_not_connected(e: std::io::Error) -> std::io::Result<()> {
    match e.kind() {
        std::io::ErrorKind::NotConnected | std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(e),
    }
}
