//! The server core: the lock server plus one net session per client, driven
//! by connection events. Sans-IO: it is given frames and the time, and returns
//! frames to send and connections to close, so the simulation test and the
//! tokio daemon run exactly this code.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use log_ratelimit::{log_limited, LogLimit};

use super::locks::{ClientId, LockAction, LockServer};
use crate::net::{Received, Session};
use crate::wire::{
    Body, Command, ErrorCode, Frame, Greeting, LockMsg, Stats, GREETING_MAGIC, PROTOCOL_VERSION,
};

pub type ConnId = u64;

/// A client that opens sessions in a loop causes one line each: limited
/// (as the daemon's per-connection lines are).
static SESSIONS_ENDED: LogLimit = LogLimit::new("lockd: sessions ended by their grace period");

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub cluster_id: u64,
    /// How long a disconnected client's locks stay held for it to reconnect.
    pub grace_ms: u64,
    /// A heartbeat goes out when nothing else was sent for this long.
    pub heartbeat_interval_ms: u64,
    /// A connection with nothing received for this long is closed.
    pub heartbeat_timeout_ms: u64,
    /// After start, only re-asserted locks are granted for this long.
    pub recovery_ms: u64,
}

impl ServerConfig {
    pub fn new(cluster_id: u64) -> ServerConfig {
        ServerConfig {
            cluster_id,
            grace_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
            recovery_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerInput {
    Connected(ConnId),
    Frame(ConnId, Frame),
    Disconnected(ConnId),
    /// Time passed: heartbeats, timeouts, grace and recovery deadlines.
    Tick,
    /// The end of a batch of input: send acks nothing else carried.
    Flush,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOutput {
    Send(ConnId, Frame),
    /// Close the connection; the reason is logged.
    Close(ConnId, String),
}

struct ConnState {
    client: Option<ClientId>,
    last_recv_us: u64,
    last_send_us: u64,
}

struct ClientState {
    session: Session,
    conn: Option<ConnId>,
    last_recv_us: u64,
}

pub struct ServerCore {
    config: ServerConfig,
    epoch: u64,
    locks: LockServer,
    conns: BTreeMap<ConnId, ConnState>,
    clients: BTreeMap<ClientId, ClientState>,
    /// Clients that received frames since the last flush (may owe an ack).
    ack_dirty: Vec<ClientId>,
    actions: Vec<LockAction>,
    grant_latency_us: Histogram<u64>,
}

impl ServerCore {
    /// `epoch` tells this server incarnation from earlier ones (clients of an
    /// earlier one re-assert their locks); `now_us` starts the recovery window.
    pub fn new(config: ServerConfig, epoch: u64, now_us: u64) -> ServerCore {
        let recovering_until_us = now_us + config.recovery_ms * 1000;
        ServerCore {
            config,
            epoch,
            locks: LockServer::new(recovering_until_us),
            conns: BTreeMap::new(),
            clients: BTreeMap::new(),
            ack_dirty: Vec::new(),
            actions: Vec::new(),
            grant_latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("histogram bounds are valid"),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn locks(&self) -> &LockServer {
        &self.locks
    }

    pub fn stats(&self) -> Stats {
        let h = &self.grant_latency_us;
        Stats {
            clients_connected: self.clients.values().filter(|c| c.conn.is_some()).count() as u64,
            sessions: self.clients.len() as u64,
            locks: self.locks.locks() as u64,
            waiters: self.locks.waiters(),
            grants_total: self.locks.grants_total(),
            invalidations_total: self.locks.invalidations_total(),
            grant_p50_us: h.value_at_quantile(0.5),
            grant_p99_us: h.value_at_quantile(0.99),
            grant_p999_us: h.value_at_quantile(0.999),
            grant_max_us: h.max(),
        }
    }

    pub fn handle(&mut self, now_us: u64, input: ServerInput, out: &mut Vec<ServerOutput>) {
        match input {
            ServerInput::Connected(conn) => {
                self.conns.insert(
                    conn,
                    ConnState {
                        client: None,
                        last_recv_us: now_us,
                        last_send_us: now_us,
                    },
                );
            }
            ServerInput::Frame(conn, frame) => self.frame(now_us, conn, frame, out),
            ServerInput::Disconnected(conn) => self.disconnected(conn),
            ServerInput::Tick => self.tick(now_us, out),
            ServerInput::Flush => self.flush(now_us, out),
        }
    }

    fn frame(&mut self, now_us: u64, conn: ConnId, frame: Frame, out: &mut Vec<ServerOutput>) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        state.last_recv_us = now_us;
        let Some(client) = state.client else {
            self.greeting(now_us, conn, frame, out);
            return;
        };
        let client_state = self
            .clients
            .get_mut(&client)
            .expect("bound connections have a session");
        client_state.last_recv_us = now_us;
        let received = match client_state.session.receive(frame) {
            Ok(received) => received,
            Err(error) => return self.close(conn, format!("client {client:#x}: {error}"), out),
        };
        if self.ack_dirty.last() != Some(&client) {
            self.ack_dirty.push(client);
        }
        match received {
            Received::Duplicate | Received::Control(_) => {}
            Received::Request(request) => self.request(now_us, conn, client, request, out),
            Received::Response {
                request, response, ..
            } => {
                if let (Command::Invalidate, Some(msg)) = (request.command, response.lock_msg()) {
                    let mut actions = std::mem::take(&mut self.actions);
                    self.locks.invalidated(now_us, client, msg, &mut actions);
                    self.apply(now_us, &mut actions, out);
                    self.actions = actions;
                } else {
                    self.close(
                        conn,
                        format!(
                            "client {client:#x}: unexpected {:?} response",
                            response.command
                        ),
                        out,
                    );
                }
            }
        }
    }

    fn request(
        &mut self,
        now_us: u64,
        conn: ConnId,
        client: ClientId,
        request: Frame,
        out: &mut Vec<ServerOutput>,
    ) {
        let mut actions = std::mem::take(&mut self.actions);
        match (request.command, request.body) {
            (Command::Lock, Body::Lock(msg)) => {
                self.locks
                    .request(now_us, client, request.request_id, msg, &mut actions)
            }
            (Command::Recover, Body::Lock(msg)) => {
                self.locks
                    .recover(now_us, client, request.request_id, msg, &mut actions)
            }
            (Command::Farewell, _) => {
                self.locks.release_all(now_us, client, &mut actions);
                self.respond(
                    now_us,
                    client,
                    request.request_id,
                    Command::Farewell,
                    ErrorCode::Ok,
                    Body::Empty,
                    out,
                );
                // The session ends; its connection is left for the client to close.
                self.clients.remove(&client);
                if let Some(state) = self.conns.get_mut(&conn) {
                    state.client = None;
                }
            }
            (Command::Stat, _) => {
                let stats = self.stats();
                self.respond(
                    now_us,
                    client,
                    request.request_id,
                    Command::Stat,
                    ErrorCode::Ok,
                    Body::Stats(Box::new(stats)),
                    out,
                );
            }
            (command, _) => {
                self.actions = actions;
                return self.close(
                    conn,
                    format!("client {client:#x}: {command:?} is not a client request"),
                    out,
                );
            }
        }
        self.apply(now_us, &mut actions, out);
        self.actions = actions;
    }

    /// Turns the lock server's actions into frames on the clients' sessions.
    fn apply(&mut self, now_us: u64, actions: &mut Vec<LockAction>, out: &mut Vec<ServerOutput>) {
        for action in actions.drain(..) {
            match action {
                LockAction::Grant {
                    client,
                    request_id,
                    command,
                    msg,
                    waited_us,
                } => {
                    self.grant_latency_us.saturating_record(waited_us.max(1));
                    self.respond(
                        now_us,
                        client,
                        request_id,
                        command,
                        ErrorCode::Ok,
                        Body::Lock(msg),
                        out,
                    );
                }
                LockAction::Refuse {
                    client,
                    request_id,
                    command,
                    msg,
                    error,
                } => {
                    self.respond(
                        now_us,
                        client,
                        request_id,
                        command,
                        error,
                        Body::Lock(msg),
                        out,
                    );
                }
                LockAction::Invalidate { client, msg } => self.invalidate(now_us, client, msg, out),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        now_us: u64,
        client: ClientId,
        request_id: u64,
        command: Command,
        error: ErrorCode,
        body: Body,
        out: &mut Vec<ServerOutput>,
    ) {
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        match state.session.respond(request_id, command, error, body) {
            Ok(frame) => self.send(now_us, client, frame, out),
            Err(error) => {
                if let Some(conn) = state.conn {
                    self.close(conn, format!("client {client:#x}: {error}"), out);
                }
            }
        }
    }

    fn invalidate(
        &mut self,
        now_us: u64,
        client: ClientId,
        msg: LockMsg,
        out: &mut Vec<ServerOutput>,
    ) {
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        match state.session.request(Command::Invalidate, Body::Lock(msg)) {
            Ok(frame) => self.send(now_us, client, frame, out),
            Err(error) => {
                if let Some(conn) = state.conn {
                    self.close(conn, format!("client {client:#x}: {error}"), out);
                }
            }
        }
    }

    /// Sends a sequenced frame if the client is connected; either way the
    /// session keeps it until answered or acked, for a resend on reconnect.
    fn send(&mut self, now_us: u64, client: ClientId, frame: Frame, out: &mut Vec<ServerOutput>) {
        let state = self
            .clients
            .get_mut(&client)
            .expect("caller checked the session");
        if let Some(conn) = state.conn {
            out.push(ServerOutput::Send(conn, state.session.stamp(frame)));
            if let Some(conn_state) = self.conns.get_mut(&conn) {
                conn_state.last_send_us = now_us;
            }
        }
    }

    fn greeting(&mut self, now_us: u64, conn: ConnId, frame: Frame, out: &mut Vec<ServerOutput>) {
        let greeting = match (frame.command, frame.response, frame.seq, frame.body) {
            (Command::Greeting, false, 0, Body::Greeting(greeting)) => greeting,
            _ => {
                return self.close(
                    conn,
                    format!("expected a greeting, received {:?}", frame.command),
                    out,
                )
            }
        };
        let mut reply = Greeting {
            magic: GREETING_MAGIC,
            version: PROTOCOL_VERSION,
            resumed: 0,
            cluster_id: self.config.cluster_id,
            client_id: greeting.client_id,
            server_epoch: self.epoch,
            recv_seq: 0,
        };
        let refusal = if greeting.version != PROTOCOL_VERSION {
            Some((
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version {} (ours {PROTOCOL_VERSION})",
                    greeting.version
                ),
            ))
        } else if greeting.cluster_id != self.config.cluster_id {
            Some((
                ErrorCode::ClusterMismatch,
                format!(
                    "cluster id {:#x} (ours {:#x})",
                    greeting.cluster_id, self.config.cluster_id
                ),
            ))
        } else {
            None
        };
        if let Some((error, reason)) = refusal {
            let response = Frame {
                seq: 0,
                ack: 0,
                request_id: 0,
                command: Command::Greeting,
                response: true,
                error,
                body: Body::Greeting(Box::new(reply)),
            };
            out.push(ServerOutput::Send(conn, response));
            return self.close(
                conn,
                format!("refused client {:#x}: {reason}", greeting.client_id),
                out,
            );
        }
        let client = greeting.client_id;
        let resumable = greeting.server_epoch == self.epoch && self.clients.contains_key(&client);
        if !resumable && self.clients.contains_key(&client) {
            // The client lost its session state: what it held is released.
            self.end_session(now_us, client, out);
        }
        let state = self.clients.entry(client).or_insert_with(|| ClientState {
            session: Session::new(),
            conn: None,
            last_recv_us: now_us,
        });
        if let Some(old_conn) = state.conn.replace(conn) {
            if let Some(old) = self.conns.get_mut(&old_conn) {
                old.client = None;
            }
            out.push(ServerOutput::Close(
                old_conn,
                format!("client {client:#x} reconnected on another connection"),
            ));
        }
        state.last_recv_us = now_us;
        reply.resumed = u32::from(resumable);
        reply.recv_seq = state.session.recv_seq();
        let resend = if resumable {
            state.session.resend(greeting.recv_seq)
        } else {
            Ok(Vec::new())
        };
        let response = state.session.control(
            Command::Greeting,
            true,
            ErrorCode::Ok,
            Body::Greeting(Box::new(reply)),
        );
        self.conns
            .get_mut(&conn)
            .expect("conn checked by caller")
            .client = Some(client);
        out.push(ServerOutput::Send(conn, state.session.stamp(response)));
        match resend {
            Ok(frames) => {
                for frame in frames {
                    out.push(ServerOutput::Send(conn, state.session.stamp(frame)));
                }
            }
            Err(error) => self.close(conn, format!("client {client:#x}: resume: {error}"), out),
        }
    }

    fn end_session(&mut self, now_us: u64, client: ClientId, out: &mut Vec<ServerOutput>) {
        if let Some(state) = self.clients.remove(&client) {
            if let Some(conn) = state.conn {
                if let Some(conn_state) = self.conns.get_mut(&conn) {
                    conn_state.client = None;
                }
            }
        }
        let mut actions = std::mem::take(&mut self.actions);
        self.locks.release_all(now_us, client, &mut actions);
        self.apply(now_us, &mut actions, out);
        self.actions = actions;
    }

    fn close(&mut self, conn: ConnId, reason: String, out: &mut Vec<ServerOutput>) {
        self.disconnected(conn);
        out.push(ServerOutput::Close(conn, reason));
    }

    fn disconnected(&mut self, conn: ConnId) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(client) = state.client {
            if let Some(client_state) = self.clients.get_mut(&client) {
                if client_state.conn == Some(conn) {
                    client_state.conn = None;
                }
            }
        }
    }

    fn flush(&mut self, now_us: u64, out: &mut Vec<ServerOutput>) {
        for client in std::mem::take(&mut self.ack_dirty) {
            let Some(state) = self.clients.get_mut(&client) else {
                continue;
            };
            let Some(conn) = state.conn else {
                continue;
            };
            if state.session.ack_pending() {
                let heartbeat =
                    state
                        .session
                        .control(Command::Heartbeat, false, ErrorCode::Ok, Body::Empty);
                out.push(ServerOutput::Send(conn, state.session.stamp(heartbeat)));
                if let Some(conn_state) = self.conns.get_mut(&conn) {
                    conn_state.last_send_us = now_us;
                }
            }
        }
    }

    fn tick(&mut self, now_us: u64, out: &mut Vec<ServerOutput>) {
        let interval_us = self.config.heartbeat_interval_ms * 1000;
        let timeout_us = self.config.heartbeat_timeout_ms * 1000;
        let mut dead = Vec::new();
        for (&conn, state) in self.conns.iter_mut() {
            if now_us.saturating_sub(state.last_recv_us) >= timeout_us {
                dead.push(conn);
            } else if state.client.is_some()
                && now_us.saturating_sub(state.last_send_us) >= interval_us
            {
                state.last_send_us = now_us;
                let ack = state
                    .client
                    .and_then(|c| self.clients.get_mut(&c))
                    .map_or(0, |c| c.session.recv_seq());
                let heartbeat = Frame {
                    seq: 0,
                    ack,
                    request_id: 0,
                    command: Command::Heartbeat,
                    response: false,
                    error: ErrorCode::Ok,
                    body: Body::Empty,
                };
                out.push(ServerOutput::Send(conn, heartbeat));
            }
        }
        dead.sort_unstable();
        for conn in dead {
            self.close(
                conn,
                format!(
                    "nothing received for {} ms",
                    self.config.heartbeat_timeout_ms
                ),
                out,
            );
        }
        let grace_us = self.config.grace_ms * 1000;
        let mut expired: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.conn.is_none() && now_us.saturating_sub(c.last_recv_us) >= grace_us)
            .map(|(&id, _)| id)
            .collect();
        expired.sort_unstable();
        for client in expired {
            log_limited!(
                SESSIONS_ENDED,
                log::Level::Info,
                "client {client:#x}: grace period over, releasing its locks"
            );
            self.end_session(now_us, client, out);
        }
        let mut actions = std::mem::take(&mut self.actions);
        self.locks.tick(now_us, &mut actions);
        self.apply(now_us, &mut actions, out);
        self.actions = actions;
    }
}
