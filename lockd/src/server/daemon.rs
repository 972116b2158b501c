//! The daemon: accepts connections, runs each through the net layer's reader
//! and writer tasks, and feeds one [`ServerCore`] from a bounded event queue.
//!
//! The core task never waits on a socket: frames it sends are appended to the
//! connection's outbox, and a connection whose outbox passes
//! [`OUTBOX_MAX_BYTES`] (a peer that stopped reading) is closed; its session
//! and locks stay for the grace period like any disconnect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log_ratelimit::{log_limited, LogLimit};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::core::{ServerConfig, ServerCore, ServerInput, ServerOutput};
use crate::hash::FastMap;
use crate::net::{spawn_conn, ConnEvent, Endpoint, Listener, Outbox};
use crate::wire::Stats;

/// Queued output per connection before the peer counts as not reading.
pub const OUTBOX_MAX_BYTES: usize = 64 << 20;
/// Batches of frames queued from readers to the core; readers wait when full.
const EVENTS_QUEUE_MAX: usize = 1024;
/// Batches the core takes per wake-up before flushing output.
const EVENTS_PER_WAKE_MAX: usize = 64;
/// Timer resolution for heartbeats, timeouts, grace and recovery.
const TICK_MS: u64 = 50;

// A client that connects in a loop, or sends garbage in a loop, must not
// fill the disk holding the daemon's log: the lines it can cause once per
// connection are rate-limited, each kind on its own.
static CONNECTIONS: LogLimit = LogLimit::new("lockd: connection messages");
static CONNECTION_ERRORS: LogLimit = LogLimit::new("lockd: connections closed for cause");
static ACCEPT_ERRORS: LogLimit = LogLimit::new("lockd: accept failures");

enum CoreEvent {
    Accepted(u64, Arc<Outbox>),
    Conn(ConnEvent),
    Stats(oneshot::Sender<Stats>),
    Shutdown(oneshot::Sender<()>),
}

impl From<ConnEvent> for CoreEvent {
    fn from(event: ConnEvent) -> CoreEvent {
        CoreEvent::Conn(event)
    }
}

/// A running daemon: where it listens, its stats, and its shutdown.
pub struct DaemonHandle {
    endpoint: Endpoint,
    events: mpsc::Sender<CoreEvent>,
    task: JoinHandle<()>,
}

impl DaemonHandle {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub async fn stats(&self) -> Option<Stats> {
        let (reply, answer) = oneshot::channel();
        self.events.send(CoreEvent::Stats(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Stops accepting, flushes what is queued to every connection, closes
    /// them, and removes a unix socket's file.
    pub async fn shutdown(self) {
        let (reply, done) = oneshot::channel();
        if self.events.send(CoreEvent::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
        let _ = self.task.await;
    }
}

/// Starts a daemon on `listener` (bind port 0 in tests and read the endpoint).
pub fn run(listener: Listener, config: ServerConfig) -> std::io::Result<DaemonHandle> {
    let endpoint = listener.endpoint()?;
    let (events_tx, events_rx) = mpsc::channel(EVENTS_QUEUE_MAX);
    let epoch = rand::random::<u64>() | 1;
    log::info!(
        "lockd listening on {endpoint}, cluster id {:#x}, epoch {epoch:#x}",
        config.cluster_id
    );
    let accept_events = events_tx.clone();
    let listener = Arc::new(listener);
    let accept = tokio::spawn(accept_loop(listener.clone(), accept_events));
    let task = tokio::spawn(async move {
        core_loop(ServerCore::new(config, epoch, 0), events_rx).await;
        accept.abort();
        // The accept task holds the listener: once it is gone, so is the
        // listening socket, and a new daemon can bind the address at once.
        let _ = accept.await;
        listener.cleanup();
        drop(listener);
    });
    Ok(DaemonHandle {
        endpoint,
        events: events_tx,
        task,
    })
}

async fn accept_loop(listener: Arc<Listener>, events: mpsc::Sender<CoreEvent>) {
    let mut next_conn = 1u64;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let conn = next_conn;
                next_conn += 1;
                let outbox = Outbox::new();
                if events
                    .send(CoreEvent::Accepted(conn, outbox.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
                spawn_conn(stream, conn, outbox, events.clone());
            }
            Err(error) => {
                // Out of descriptors and the like: wait, do not spin.
                log_limited!(ACCEPT_ERRORS, log::Level::Warn, "accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct Outboxes {
    /// Looked up once per frame sent: no SipHash.
    conns: FastMap<u64, (Arc<Outbox>, Vec<u8>)>,
    touched: Vec<u64>,
}

async fn core_loop(mut core: ServerCore, mut events: mpsc::Receiver<CoreEvent>) {
    let start = Instant::now();
    let now_us = || start.elapsed().as_micros() as u64;
    let mut outboxes = Outboxes {
        conns: FastMap::default(),
        touched: Vec::new(),
    };
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            event = events.recv() => event,
            _ = tick.tick() => {
                core.handle(now_us(), ServerInput::Tick, &mut out);
                flush(&mut core, now_us(), &mut out, &mut outboxes);
                continue;
            }
        };
        let Some(mut event) = first else {
            return;
        };
        for taken in 0..EVENTS_PER_WAKE_MAX {
            match event {
                CoreEvent::Shutdown(done) => {
                    for (outbox, _) in outboxes.conns.values() {
                        outbox.close();
                    }
                    log::info!("lockd shutting down");
                    let _ = done.send(());
                    return;
                }
                other => handle_event(&mut core, now_us(), other, &mut out, &mut outboxes),
            }
            if taken + 1 == EVENTS_PER_WAKE_MAX {
                break;
            }
            match events.try_recv() {
                Ok(next) => event = next,
                Err(_) => break,
            }
        }
        core.handle(now_us(), ServerInput::Flush, &mut out);
        flush(&mut core, now_us(), &mut out, &mut outboxes);
    }
}

fn handle_event(
    core: &mut ServerCore,
    now_us: u64,
    event: CoreEvent,
    out: &mut Vec<ServerOutput>,
    outboxes: &mut Outboxes,
) {
    match event {
        CoreEvent::Accepted(conn, outbox) => {
            outboxes.conns.insert(conn, (outbox, Vec::new()));
            core.handle(now_us, ServerInput::Connected(conn), out);
        }
        CoreEvent::Conn(ConnEvent::Frames(conn, mut frames)) => {
            for frame in frames.drain(..) {
                core.handle(now_us, ServerInput::Frame(conn, frame), out);
            }
            if let Some((outbox, _)) = outboxes.conns.get(&conn) {
                outbox.recycle(frames);
            }
        }
        CoreEvent::Conn(ConnEvent::Closed(conn, reason)) => {
            if let Some((outbox, _)) = outboxes.conns.remove(&conn) {
                outbox.close();
                log_limited!(
                    CONNECTIONS,
                    log::Level::Info,
                    "connection {conn} closed: {reason}"
                );
                core.handle(now_us, ServerInput::Disconnected(conn), out);
            }
        }
        CoreEvent::Stats(reply) => {
            let _ = reply.send(core.stats());
        }
        CoreEvent::Shutdown(_) => unreachable!("handled by the loop"),
    }
}

/// Encodes the core's output into each connection's staging buffer, then
/// moves each buffer to its outbox with one lock and one wake-up.
fn flush(core: &mut ServerCore, now_us: u64, out: &mut Vec<ServerOutput>, outboxes: &mut Outboxes) {
    while !out.is_empty() {
        for output in out.drain(..) {
            match output {
                ServerOutput::Send(conn, frame) => {
                    if let Some((_, staging)) = outboxes.conns.get_mut(&conn) {
                        if staging.is_empty() {
                            outboxes.touched.push(conn);
                        }
                        frame.encode_into(frame.ack, staging);
                    }
                }
                ServerOutput::Close(conn, reason) => {
                    if let Some((outbox, mut staging)) = outboxes.conns.remove(&conn) {
                        // A refusal's reply goes out before the close.
                        outbox.append(&mut staging);
                        outbox.close();
                        log_limited!(
                            CONNECTION_ERRORS,
                            log::Level::Warn,
                            "closing connection {conn}: {reason}"
                        );
                    }
                }
            }
        }
        for conn in std::mem::take(&mut outboxes.touched) {
            let Some((outbox, staging)) = outboxes.conns.get_mut(&conn) else {
                continue;
            };
            if outbox.append(staging) > OUTBOX_MAX_BYTES {
                outbox.close();
                outboxes.conns.remove(&conn);
                log_limited!(
                    CONNECTION_ERRORS,
                    log::Level::Warn,
                    "closing connection {conn}: peer does not read ({OUTBOX_MAX_BYTES} bytes queued)"
                );
                core.handle(now_us, ServerInput::Disconnected(conn), out);
            }
        }
    }
}
