//! The tokio side of one connection: a reader task and a writer task.
//!
//! Seed 003: the reader never writes. It reads in bulk into one buffer,
//! decodes every whole frame there (an incomplete one waits for more bytes, an
//! invalid one closes the connection with the reason), and hands the batch to
//! the owner's state machine over a bounded channel. The state machine appends
//! encoded frames to the connection's [`Outbox`] without blocking; the writer
//! takes everything queued and writes it with one call. Neither direction can
//! wait on the other, so two peers flooding each other cannot deadlock.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use super::addr::Stream;
use crate::wire::{decode, Frame};

/// Bytes read per call: many frames per system call under load.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Frames handed over in one batch (a full read buffer of the smallest frame).
pub const FRAMES_PER_BATCH_MAX: usize = READ_BUFFER_BYTES / crate::wire::HEADER_BYTES;
/// Emptied batch vectors kept for the reader to reuse: no allocation, and no
/// fresh pages to fault in, per read. The reader yields after each batch, so
/// it is rarely more than a batch or two ahead of its owner and a few spares
/// suffice (no page faults at 40,000 in flight); the bound keeps an owner
/// that falls behind from leaving each connection with megabytes of them.
const SPARE_BATCHES_MAX: usize = 8;

/// What a connection's reader reports to the state machine.
#[derive(Debug)]
pub enum ConnEvent {
    Frames(u64, Vec<Frame>),
    /// The connection ended: EOF, an I/O error, or an invalid frame (the reason).
    Closed(u64, String),
}

/// Encoded frames waiting for the writer, shared between the state machine
/// (appends, never blocks) and the writer task (takes everything at once).
#[derive(Default)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
    reader: Mutex<Option<AbortHandle>>,
    spare_batches: Mutex<Vec<Vec<Frame>>>,
}

#[derive(Default)]
struct OutboxState {
    pending: Vec<u8>,
    closed: bool,
}

impl Outbox {
    pub fn new() -> Arc<Outbox> {
        Arc::new(Outbox::default())
    }

    /// Moves `bytes` to the queue; returns how many bytes are now queued, so
    /// the caller can drop a peer that does not read.
    pub fn append(&self, bytes: &mut Vec<u8>) -> usize {
        let mut state = self.state.lock().expect("outbox lock");
        if state.closed {
            bytes.clear();
            return 0;
        }
        if state.pending.is_empty() {
            std::mem::swap(&mut state.pending, bytes);
        } else {
            state.pending.extend_from_slice(bytes);
            bytes.clear();
        }
        let queued = state.pending.len();
        drop(state);
        self.notify.notify_one();
        queued
    }

    /// Stops reading at once; the writer sends what is queued, then shuts the
    /// socket down.
    pub fn close(&self) {
        self.state.lock().expect("outbox lock").closed = true;
        if let Some(reader) = self.reader.lock().expect("outbox lock").take() {
            reader.abort();
        }
        self.notify.notify_one();
    }

    /// Gives a processed batch's vector back for the reader to reuse.
    pub fn recycle(&self, mut batch: Vec<Frame>) {
        batch.clear();
        let mut spare = self.spare_batches.lock().expect("outbox lock");
        if spare.len() < SPARE_BATCHES_MAX {
            spare.push(batch);
        }
    }

    fn spare_batch(&self) -> Vec<Frame> {
        self.spare_batches
            .lock()
            .expect("outbox lock")
            .pop()
            .unwrap_or_default()
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("outbox lock").closed
    }
}

/// Starts the reader and writer of one connection. The reader's events go to
/// `events`; the owner writes through `outbox`.
pub fn spawn_conn<E>(stream: Stream, conn: u64, outbox: Arc<Outbox>, events: mpsc::Sender<E>)
where
    E: From<ConnEvent> + Send + 'static,
{
    match stream {
        Stream::Tcp(stream) => {
            let (read, write) = stream.into_split();
            spawn_halves(read, write, conn, outbox, events);
        }
        Stream::Unix(stream) => {
            let (read, write) = stream.into_split();
            spawn_halves(read, write, conn, outbox, events);
        }
    }
}

fn spawn_halves<R, W, E>(read: R, write: W, conn: u64, outbox: Arc<Outbox>, events: mpsc::Sender<E>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    E: From<ConnEvent> + Send + 'static,
{
    let writer_events = events.clone();
    let reader = tokio::spawn(read_loop(read, conn, outbox.clone(), events));
    *outbox.reader.lock().expect("outbox lock") = Some(reader.abort_handle());
    if outbox.is_closed() {
        reader.abort();
    }
    tokio::spawn(write_loop(write, conn, outbox, writer_events));
}

async fn read_loop<R, E>(mut read: R, conn: u64, outbox: Arc<Outbox>, events: mpsc::Sender<E>)
where
    R: AsyncRead + Unpin,
    E: From<ConnEvent>,
{
    let reason = match read_frames(&mut read, conn, &outbox, &events).await {
        Ok(reason) | Err(reason) => reason,
    };
    let _ = events.send(ConnEvent::Closed(conn, reason).into()).await;
}

/// Reads until the connection ends; returns why it ended.
async fn read_frames<R, E>(
    read: &mut R,
    conn: u64,
    outbox: &Outbox,
    events: &mpsc::Sender<E>,
) -> Result<String, String>
where
    R: AsyncRead + Unpin,
    E: From<ConnEvent>,
{
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut filled = 0usize;
    loop {
        let n = read
            .read(&mut buf[filled..])
            .await
            .map_err(|e| format!("read error: {e}"))?;
        if n == 0 {
            return if filled == 0 {
                Ok("peer closed the connection".into())
            } else {
                Err(format!(
                    "truncated frame: connection closed with {filled} bytes of a frame"
                ))
            };
        }
        filled += n;
        let mut frames = outbox.spare_batch();
        // Room for every frame of this read if they are lock frames (the
        // common size), so the vector does not grow step by step.
        frames.reserve(filled / (crate::wire::HEADER_BYTES + crate::wire::LockMsg::BYTES as usize));
        let mut used = 0usize;
        let mut invalid = None;
        while used < filled {
            match decode(&buf[used..filled]) {
                Ok(Some((frame, len))) => {
                    frames.push(frame);
                    used += len;
                }
                Ok(None) => break,
                Err(error) => {
                    invalid = Some(format!("invalid frame at byte {used} of a read: {error}"));
                    break;
                }
            }
        }
        buf.copy_within(used..filled, 0);
        filled -= used;
        if !frames.is_empty()
            && events
                .send(ConnEvent::Frames(conn, frames).into())
                .await
                .is_err()
        {
            return Ok("owner has gone".into());
        }
        if let Some(reason) = invalid {
            return Err(reason);
        }
        // Let the owner take this batch while it is still in cache, before
        // reading more: a reader that drained its socket first queued
        // megabytes of decoded frames that were cold again when processed.
        tokio::task::yield_now().await;
    }
}

async fn write_loop<W, E>(mut write: W, conn: u64, outbox: Arc<Outbox>, events: mpsc::Sender<E>)
where
    W: AsyncWrite + Unpin,
    E: From<ConnEvent>,
{
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut state = outbox.state.lock().expect("outbox lock");
            std::mem::swap(&mut state.pending, &mut batch);
            state.closed
        };
        if !batch.is_empty() {
            if let Err(error) = write.write_all(&batch).await {
                outbox.close();
                let _ = events
                    .send(ConnEvent::Closed(conn, format!("write error: {error}")).into())
                    .await;
                return;
            }
            batch.clear();
            continue;
        }
        if closed {
            let _ = write.shutdown().await;
            return;
        }
        outbox.notify.notified().await;
    }
}
