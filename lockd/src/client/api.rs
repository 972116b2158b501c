//! The async client library: `take(range, mode)` returns a guard; granted
//! locks stay cached after their guards are dropped, up to an LRU limit past
//! which idle ones are given back; an invalidation waits for the lock's guards
//! to be dropped, runs the caller's callback (the volume commits there), and
//! only then answers the server.
//!
//! One task owns the [`ClientCore`] and the connection; `take` and guard drops
//! talk to it over channels. It reconnects with backoff after a lost
//! connection and stops for good if the server refuses the greeting.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::core::{ClientConfig, ClientCore, ClientOutput, InvalidateToken};
use crate::hash::FastMap;
use crate::net::{spawn_conn, ConnEvent, Endpoint, Outbox};
use crate::wire::{ErrorCode, LockMsg, LockRange, Mode, Stats};

/// Idle granted locks kept by default.
pub const CACHE_LOCKS_DEFAULT: usize = 1024;
/// API calls queued to the client task; callers wait when it is full.
const COMMANDS_QUEUE_MAX: usize = 1024;
/// Frame batches queued from the reader to the client task.
const EVENTS_QUEUE_MAX: usize = 256;
/// Timer resolution for heartbeats, timeouts and the lease.
const TICK_MS: u64 = 50;
/// Reconnect backoff bounds.
const RECONNECT_MIN_MS: u64 = 50;
const RECONNECT_MAX_MS: u64 = 1_000;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Called as `(range, held mode, target mode)` before the client gives up a
/// mode; the returned future does the holder's work (e.g. a commit).
pub type InvalidateFn =
    Arc<dyn Fn(LockRange, Mode, Mode) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Clone)]
pub struct LockClientConfig {
    pub endpoint: Endpoint,
    pub core: ClientConfig,
    /// Idle granted locks kept; the least recently used beyond are released.
    pub cache_locks_max: usize,
    pub on_invalidate: Option<InvalidateFn>,
}

impl LockClientConfig {
    pub fn new(endpoint: Endpoint, cluster_id: u64) -> LockClientConfig {
        LockClientConfig {
            endpoint,
            core: ClientConfig::new(cluster_id, rand::random::<u64>() | 1),
            cache_locks_max: CACHE_LOCKS_DEFAULT,
            on_invalidate: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("cannot connect to lockd: {0}")]
    Connect(String),
    #[error("{0}")]
    Refused(String),
    #[error("lockd refused the request: {0:?}")]
    Failed(ErrorCode),
    #[error("too many requests in flight")]
    Busy,
    #[error("the lock client has stopped")]
    Stopped,
}

enum Command {
    Take(LockRange, Mode, oneshot::Sender<Result<(), LockError>>),
    Stat(oneshot::Sender<Result<Stats, LockError>>),
    Farewell(oneshot::Sender<Result<(), LockError>>),
}

/// Reports from guards and callbacks; as many as guards and invalidations
/// outstanding, so an unbounded channel cannot grow without bound.
enum Internal {
    Dropped(LockRange),
    InvalidateDone(LockRange),
}

enum TaskEvent {
    Conn(ConnEvent),
}

impl From<ConnEvent> for TaskEvent {
    fn from(event: ConnEvent) -> TaskEvent {
        TaskEvent::Conn(event)
    }
}

/// A handle on the client task; cheap to clone.
#[derive(Clone)]
pub struct LockClient {
    commands: mpsc::Sender<Command>,
    internal: mpsc::UnboundedSender<Internal>,
}

/// A granted lock in use; dropping it lets the lock be cached, given back or
/// invalidated.
pub struct LockGuard {
    range: LockRange,
    mode: Mode,
    internal: mpsc::UnboundedSender<Internal>,
}

impl LockGuard {
    pub fn range(&self) -> LockRange {
        self.range
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.internal.send(Internal::Dropped(self.range));
    }
}

impl LockClient {
    /// Connects and greets; fails if the server cannot be reached or refuses
    /// us (another cluster id or protocol version).
    pub async fn connect(config: LockClientConfig) -> Result<LockClient, LockError> {
        let (commands_tx, commands_rx) = mpsc::channel(COMMANDS_QUEUE_MAX);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = ClientTask::new(config, internal_tx.clone());
        tokio::spawn(task.run(commands_rx, internal_rx, ready_tx));
        ready_rx.await.map_err(|_| LockError::Stopped)??;
        Ok(LockClient {
            commands: commands_tx,
            internal: internal_tx,
        })
    }

    /// Waits until `mode` is granted on `range` (at once if cached).
    pub async fn take(&self, range: LockRange, mode: Mode) -> Result<LockGuard, LockError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Take(range, mode, reply))
            .await
            .map_err(|_| LockError::Stopped)?;
        answer.await.map_err(|_| LockError::Stopped)??;
        Ok(LockGuard {
            range,
            mode,
            internal: self.internal.clone(),
        })
    }

    pub async fn stat(&self) -> Result<Stats, LockError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Stat(reply))
            .await
            .map_err(|_| LockError::Stopped)?;
        answer.await.map_err(|_| LockError::Stopped)?
    }

    /// Tells the server goodbye (it releases everything at once) and stops.
    pub async fn farewell(self) -> Result<(), LockError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Farewell(reply))
            .await
            .map_err(|_| LockError::Stopped)?;
        answer.await.map_err(|_| LockError::Stopped)?
    }
}

#[derive(Default)]
struct Entry {
    users: u32,
    waiting: VecDeque<(Mode, oneshot::Sender<Result<(), LockError>>)>,
    requested: bool,
    invalidation: Option<(InvalidateToken, LockMsg, bool)>,
    lru_tick: Option<u64>,
}

struct ClientTask {
    config: LockClientConfig,
    core: ClientCore,
    start: Instant,
    /// Exact lookups only (per take, guard drop and grant): a hash map.
    entries: FastMap<LockRange, Entry>,
    lru: BTreeMap<u64, LockRange>,
    lru_next: u64,
    internal: mpsc::UnboundedSender<Internal>,
    conn: Option<(u64, Arc<Outbox>)>,
    next_conn: u64,
    staging: Vec<u8>,
    stats_waiting: VecDeque<oneshot::Sender<Result<Stats, LockError>>>,
    farewell: Option<oneshot::Sender<Result<(), LockError>>>,
    ready: Option<oneshot::Sender<Result<(), LockError>>>,
    refused: Option<String>,
    stopping: bool,
    /// When to try connecting again after losing the connection.
    retry_at: tokio::time::Instant,
    out: Vec<ClientOutput>,
}

fn combine(a: Mode, b: Mode) -> Mode {
    if a.covers(b) {
        a
    } else if b.covers(a) {
        b
    } else {
        Mode::Write
    }
}

impl ClientTask {
    fn new(config: LockClientConfig, internal: mpsc::UnboundedSender<Internal>) -> ClientTask {
        ClientTask {
            core: ClientCore::new(config.core.clone()),
            config,
            start: Instant::now(),
            entries: FastMap::default(),
            lru: BTreeMap::new(),
            lru_next: 0,
            internal,
            conn: None,
            next_conn: 1,
            staging: Vec::new(),
            stats_waiting: VecDeque::new(),
            farewell: None,
            ready: None,
            refused: None,
            stopping: false,
            retry_at: tokio::time::Instant::now(),
            out: Vec::new(),
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64 + 1
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        ready: oneshot::Sender<Result<(), LockError>>,
    ) {
        self.ready = Some(ready);
        let (events_tx, mut events) = mpsc::channel::<TaskEvent>(EVENTS_QUEUE_MAX);
        let mut backoff_ms = RECONNECT_MIN_MS;
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.stopping {
                if let Some((_, outbox)) = self.conn.take() {
                    outbox.close();
                }
                return;
            }
            if self.conn.is_none()
                && self.refused.is_none()
                && tokio::time::Instant::now() >= self.retry_at
            {
                match self.connect(&events_tx).await {
                    Ok(()) => backoff_ms = RECONNECT_MIN_MS,
                    Err(error) => {
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Err(LockError::Connect(error)));
                            return;
                        }
                        log::info!("lockd client: reconnect failed: {error}");
                        self.retry_at =
                            tokio::time::Instant::now() + Duration::from_millis(backoff_ms);
                        backoff_ms = (backoff_ms * 2).min(RECONNECT_MAX_MS);
                    }
                }
                self.flush();
            }
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => self.stopping = true,
                },
                Some(report) = internal.recv() => self.internal(report),
                Some(TaskEvent::Conn(event)) = events.recv() => self.conn_event(event),
                _ = tick.tick() => {
                    let now = self.now_us();
                    self.core.tick(now, &mut self.out);
                }
            }
            self.flush();
        }
    }

    async fn connect(&mut self, events: &mpsc::Sender<TaskEvent>) -> Result<(), String> {
        let connecting = self.config.endpoint.connect();
        let stream =
            match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting).await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(format!("{}: {error}", self.config.endpoint)),
                Err(_) => return Err(format!("{}: timed out", self.config.endpoint)),
            };
        let conn = self.next_conn;
        self.next_conn += 1;
        let outbox = Outbox::new();
        spawn_conn(stream, conn, outbox.clone(), events.clone());
        self.conn = Some((conn, outbox));
        let now = self.now_us();
        self.core.connected(now, &mut self.out);
        Ok(())
    }

    fn command(&mut self, command: Command) {
        if let Some(reason) = &self.refused {
            let error = LockError::Refused(reason.clone());
            match command {
                Command::Take(_, _, reply) | Command::Farewell(reply) => {
                    drop(reply.send(Err(error)))
                }
                Command::Stat(reply) => drop(reply.send(Err(error))),
            }
            return;
        }
        let now = self.now_us();
        match command {
            Command::Take(range, mode, reply) => {
                let entry = self.entries.entry(range).or_default();
                if let Some(tick) = entry.lru_tick.take() {
                    self.lru.remove(&tick);
                }
                entry.waiting.push_back((mode, reply));
                self.process(range);
            }
            Command::Stat(reply) => match self.core.stat(now, &mut self.out) {
                Ok(()) => self.stats_waiting.push_back(reply),
                Err(_) => drop(reply.send(Err(LockError::Busy))),
            },
            Command::Farewell(reply) => match self.core.farewell(now, &mut self.out) {
                Ok(()) => self.farewell = Some(reply),
                Err(_) => drop(reply.send(Err(LockError::Busy))),
            },
        }
    }

    fn internal(&mut self, report: Internal) {
        match report {
            Internal::Dropped(range) => {
                if let Some(entry) = self.entries.get_mut(&range) {
                    entry.users -= 1;
                }
                self.process(range);
            }
            Internal::InvalidateDone(range) => {
                let Some(entry) = self.entries.get_mut(&range) else {
                    return;
                };
                if let Some((token, msg, _)) = entry.invalidation.take() {
                    let now = self.now_us();
                    self.core.invalidate_done(now, token, msg, &mut self.out);
                }
                self.process(range);
            }
        }
    }

    fn conn_event(&mut self, event: ConnEvent) {
        let current = self.conn.as_ref().map(|(id, _)| *id);
        let now = self.now_us();
        match event {
            ConnEvent::Frames(conn, mut frames) if Some(conn) == current => {
                for frame in frames.drain(..) {
                    self.core.receive(now, frame, &mut self.out);
                }
                self.core.flush(now, &mut self.out);
                if let Some((_, outbox)) = &self.conn {
                    outbox.recycle(frames);
                }
            }
            ConnEvent::Closed(conn, reason) if Some(conn) == current => {
                log::info!("lockd client: connection closed: {reason}");
                if let Some((_, outbox)) = self.conn.take() {
                    outbox.close();
                }
                self.core.disconnected();
                self.retry_at =
                    tokio::time::Instant::now() + Duration::from_millis(RECONNECT_MIN_MS);
            }
            _ => {}
        }
    }

    /// Serves what the cached mode allows, asks for what it does not, runs a
    /// pending invalidation once the lock is unused, and caches idle locks.
    fn process(&mut self, range: LockRange) {
        let now = self.now_us();
        let held = self.core.held(&range);
        let Some(entry) = self.entries.get_mut(&range) else {
            return;
        };
        if let Some((token, msg, running)) = entry.invalidation {
            if entry.users == 0 && !running {
                entry.invalidation = Some((token, msg, true));
                self.start_invalidation(range, held, msg);
            }
            return;
        }
        let mut still_waiting = VecDeque::new();
        for (mode, reply) in entry.waiting.drain(..) {
            if held.covers(mode) && !entry.requested {
                if reply.send(Ok(())).is_ok() {
                    entry.users += 1;
                }
            } else {
                still_waiting.push_back((mode, reply));
            }
        }
        entry.waiting = still_waiting;
        if !entry.waiting.is_empty() && !entry.requested {
            let mut wanted = entry
                .waiting
                .iter()
                .fold(Mode::Null, |acc, (mode, _)| combine(acc, *mode));
            if entry.users > 0 {
                wanted = combine(wanted, held);
            }
            match self.core.request(
                now,
                LockMsg {
                    range,
                    mode: wanted,
                },
                &mut self.out,
            ) {
                Ok(()) => entry.requested = true,
                Err(_) => {
                    for (_, reply) in entry.waiting.drain(..) {
                        let _ = reply.send(Err(LockError::Busy));
                    }
                }
            }
            return;
        }
        if entry.users == 0 && entry.waiting.is_empty() && !entry.requested {
            if held == Mode::Null {
                self.entries.remove(&range);
            } else if entry.lru_tick.is_none() {
                entry.lru_tick = Some(self.lru_next);
                self.lru.insert(self.lru_next, range);
                self.lru_next += 1;
                self.shrink_cache();
            }
        }
    }

    /// Gives back the least recently used idle locks beyond the limit.
    fn shrink_cache(&mut self) {
        let now = self.now_us();
        while self.lru.len() > self.config.cache_locks_max {
            let (_, range) = self.lru.pop_first().expect("longer than the limit");
            let Some(entry) = self.entries.get_mut(&range) else {
                continue;
            };
            entry.lru_tick = None;
            if self
                .core
                .request(
                    now,
                    LockMsg {
                        range,
                        mode: Mode::Null,
                    },
                    &mut self.out,
                )
                .is_ok()
            {
                entry.requested = true;
            }
        }
    }

    fn start_invalidation(&mut self, range: LockRange, held: Mode, target: LockMsg) {
        let internal = self.internal.clone();
        match (
            &self.config.on_invalidate,
            held.covers(target.mode) && held == target.mode,
        ) {
            // Already at the target: nothing to do before answering.
            (_, true) | (None, _) => {
                let _ = internal.send(Internal::InvalidateDone(range));
            }
            (Some(callback), false) => {
                let work = callback(range, held, target.mode);
                tokio::spawn(async move {
                    work.await;
                    let _ = internal.send(Internal::InvalidateDone(range));
                });
            }
        }
    }

    /// Acts on the core's outputs and hands encoded frames to the writer.
    fn flush(&mut self) {
        while !self.out.is_empty() {
            let outputs = std::mem::take(&mut self.out);
            for output in outputs {
                self.output(output);
            }
        }
        if let Some((_, outbox)) = &self.conn {
            if !self.staging.is_empty() {
                outbox.append(&mut self.staging);
            }
        } else {
            self.staging.clear();
        }
    }

    fn output(&mut self, output: ClientOutput) {
        match output {
            ClientOutput::Send(frame) => frame.encode_into(frame.ack, &mut self.staging),
            ClientOutput::Close(reason) => {
                log::info!("lockd client: closing connection: {reason}");
                if let Some((_, outbox)) = self.conn.take() {
                    outbox.append(&mut self.staging);
                    outbox.close();
                }
                self.core.disconnected();
                self.retry_at =
                    tokio::time::Instant::now() + Duration::from_millis(RECONNECT_MIN_MS);
            }
            ClientOutput::Ready { resumed } => {
                log::debug!("lockd client: session ready (resumed: {resumed})");
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            ClientOutput::Refused(reason) => {
                log::error!("lockd client: {reason}");
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(LockError::Refused(reason.clone())));
                }
                for entry in self.entries.values_mut() {
                    for (_, reply) in entry.waiting.drain(..) {
                        let _ = reply.send(Err(LockError::Refused(reason.clone())));
                    }
                }
                self.refused = Some(reason);
            }
            ClientOutput::Granted(msg) => {
                if let Some(entry) = self.entries.get_mut(&msg.range) {
                    entry.requested = false;
                }
                self.process(msg.range);
            }
            ClientOutput::Failed(msg, error) => {
                if let Some(entry) = self.entries.get_mut(&msg.range) {
                    entry.requested = false;
                    for (_, reply) in entry.waiting.drain(..) {
                        let _ = reply.send(Err(LockError::Failed(error)));
                    }
                }
                self.process(msg.range);
            }
            ClientOutput::Invalidate(token, msg) => {
                let entry = self.entries.entry(msg.range).or_default();
                if let Some(tick) = entry.lru_tick.take() {
                    self.lru.remove(&tick);
                }
                entry.invalidation = Some((token, msg, false));
                self.process(msg.range);
            }
            ClientOutput::Lost(msg) => {
                log::warn!(
                    "lockd client: lost {:?} on {:?} (no server contact within the lease)",
                    msg.mode,
                    msg.range
                );
            }
            ClientOutput::Stats(stats) => {
                if let Some(reply) = self.stats_waiting.pop_front() {
                    let _ = reply.send(Ok(stats));
                }
            }
            ClientOutput::FarewellDone => {
                if let Some(reply) = self.farewell.take() {
                    let _ = reply.send(Ok(()));
                }
                self.stopping = true;
            }
        }
    }
}
