//! The client core: one client's session with the server and the modes it
//! holds, as a sans-IO state machine. The async client library, the benchmark
//! and the simulation test all drive this code.
//!
//! Requests are named by their lock range (one outstanding request per range
//! is the caller's rule), so they survive a server restart, when the session
//! starts over: the core re-asserts every held mode with RECOVER and re-issues
//! unanswered requests. Across a reconnect to the same server the session
//! resumes and unacked frames are resent instead.

use crate::hash::FastMap;
use crate::net::{Received, Session, SessionError};
use crate::wire::{
    Body, Command, ErrorCode, Frame, Greeting, LockMsg, LockRange, Mode, Stats, GREETING_MAGIC,
    PROTOCOL_VERSION,
};

/// The session tag of a LOCK request that was a downgrade when sent.
const TAG_DOWNGRADE: u8 = 1;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub cluster_id: u64,
    /// Stable across reconnects of this client; the server's session key.
    pub client_id: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// With nothing heard from the server for this long, the client drops
    /// every lock itself. Must be below the server's grace period minus its
    /// heartbeat timeout and the largest network delay, so the client has let
    /// go before the server gives the locks to anyone else.
    pub lease_ms: u64,
}

impl ClientConfig {
    pub fn new(cluster_id: u64, client_id: u64) -> ClientConfig {
        ClientConfig {
            cluster_id,
            client_id,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
            lease_ms: 4_000,
        }
    }
}

/// Names an invalidation across the caller's work; a token from before a
/// server restart is answered locally only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidateToken {
    generation: u64,
    request_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutput {
    Send(Frame),
    /// Close the current connection (timeout or protocol error).
    Close(String),
    /// The greeting was accepted; `resumed` when the old session continued.
    Ready {
        resumed: bool,
    },
    /// The server refused us (or we it): wrong cluster id or version.
    Refused(String),
    Granted(LockMsg),
    Failed(LockMsg, ErrorCode),
    /// Drop to `msg.mode` or lower, then call [`ClientCore::invalidate_done`].
    Invalidate(InvalidateToken, LockMsg),
    /// A lock was lost: the lease ran out or its re-assertion was refused.
    Lost(LockMsg),
    Stats(Stats),
    FarewellDone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Disconnected,
    Greeting,
    Ready,
    /// The server answered our farewell and ended the session: nothing
    /// more is sent (an ack would reach a connection with no session, and
    /// the server would close it as a protocol error).
    Ended,
}

pub struct ClientCore {
    config: ClientConfig,
    session: Session,
    /// Bumped when a session starts over (server restart or lost session).
    generation: u64,
    /// The epoch of the server our session belongs to (0: none yet).
    server_epoch: u64,
    phase: Phase,
    /// Exact lookups only (one or two per request and response): a hash map.
    held: FastMap<LockRange, Mode>,
    last_recv_us: u64,
    last_send_us: u64,
    connected_us: u64,
}

impl ClientCore {
    pub fn new(config: ClientConfig) -> ClientCore {
        ClientCore {
            config,
            session: Session::new(),
            generation: 0,
            server_epoch: 0,
            phase: Phase::Disconnected,
            held: FastMap::default(),
            last_recv_us: 0,
            last_send_us: 0,
            connected_us: 0,
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// The mode this client holds on `range` (what it may use right now).
    pub fn held(&self, range: &LockRange) -> Mode {
        self.held.get(range).copied().unwrap_or(Mode::Null)
    }

    pub fn held_all(&self) -> impl Iterator<Item = (&LockRange, &Mode)> {
        self.held.iter()
    }

    pub fn requests_in_flight(&self) -> usize {
        self.session.requests_in_flight()
    }

    /// A new connection is up: greet the server.
    pub fn connected(&mut self, now_us: u64, out: &mut Vec<ClientOutput>) {
        self.phase = Phase::Greeting;
        self.connected_us = now_us;
        let greeting = Greeting {
            magic: GREETING_MAGIC,
            version: PROTOCOL_VERSION,
            resumed: 0,
            cluster_id: self.config.cluster_id,
            client_id: self.config.client_id,
            server_epoch: self.server_epoch,
            recv_seq: self.session.recv_seq(),
        };
        let frame = self.session.control(
            Command::Greeting,
            false,
            ErrorCode::Ok,
            Body::Greeting(Box::new(greeting)),
        );
        self.send(now_us, frame, out);
    }

    pub fn disconnected(&mut self) {
        self.phase = Phase::Disconnected;
    }

    /// Asks for `msg.mode` on `msg.range`. A mode the client already covers
    /// (a downgrade, NULL releases) takes effect here, before it is sent; an
    /// upgrade keeps the old mode until the grant.
    pub fn request(
        &mut self,
        now_us: u64,
        msg: LockMsg,
        out: &mut Vec<ClientOutput>,
    ) -> Result<(), SessionError> {
        let held = self.held(&msg.range);
        let downgrade = held.covers(msg.mode);
        let frame = self.session.request_tagged(
            Command::Lock,
            Body::Lock(msg),
            if downgrade { TAG_DOWNGRADE } else { 0 },
        )?;
        if downgrade {
            self.set_held(msg.range, msg.mode);
        } else if !msg.mode.covers(held) {
            // A sideways change (READ to WRITE_ONLY or back): the server may
            // grant it, and others beside it, before we hear, so we stop using
            // the old mode now.
            self.set_held(msg.range, Mode::Null);
        }
        self.send_sequenced(now_us, frame, out);
        Ok(())
    }

    pub fn stat(&mut self, now_us: u64, out: &mut Vec<ClientOutput>) -> Result<(), SessionError> {
        let frame = self.session.request(Command::Stat, Body::Empty)?;
        self.send_sequenced(now_us, frame, out);
        Ok(())
    }

    /// Says goodbye: the server releases everything at once.
    pub fn farewell(
        &mut self,
        now_us: u64,
        out: &mut Vec<ClientOutput>,
    ) -> Result<(), SessionError> {
        let frame = self.session.request(Command::Farewell, Body::Empty)?;
        self.held.clear();
        self.send_sequenced(now_us, frame, out);
        Ok(())
    }

    /// The caller finished the work an invalidation asked for: drop to the
    /// target (or NULL if the held mode does not cover it) and answer.
    pub fn invalidate_done(
        &mut self,
        now_us: u64,
        token: InvalidateToken,
        target: LockMsg,
        out: &mut Vec<ClientOutput>,
    ) {
        let held = self.held(&target.range);
        let mode = if held.covers(target.mode) {
            target.mode
        } else {
            Mode::Null
        };
        self.set_held(target.range, mode);
        if token.generation != self.generation {
            return;
        }
        let reply = LockMsg {
            range: target.range,
            mode,
        };
        match self.session.respond(
            token.request_id,
            Command::Invalidate,
            ErrorCode::Ok,
            Body::Lock(reply),
        ) {
            Ok(frame) => self.send_sequenced(now_us, frame, out),
            Err(error) => out.push(ClientOutput::Close(error.to_string())),
        }
    }

    pub fn receive(&mut self, now_us: u64, frame: Frame, out: &mut Vec<ClientOutput>) {
        self.last_recv_us = now_us;
        match self.phase {
            Phase::Disconnected | Phase::Ended => {}
            Phase::Greeting if frame.command == Command::Heartbeat => {}
            Phase::Greeting => self.greeting_reply(now_us, frame, out),
            Phase::Ready => match self.session.receive(frame) {
                Ok(received) => self.received(now_us, received, out),
                Err(error) => self.close(format!("session: {error}"), out),
            },
        }
    }

    /// Heartbeats, the dead-peer timeout and the lease.
    pub fn tick(&mut self, now_us: u64, out: &mut Vec<ClientOutput>) {
        let since_recv_us = now_us.saturating_sub(self.last_recv_us.max(self.connected_us));
        if !matches!(self.phase, Phase::Disconnected | Phase::Ended)
            && since_recv_us >= self.config.heartbeat_timeout_ms * 1000
        {
            self.close(
                format!(
                    "nothing received for {} ms",
                    self.config.heartbeat_timeout_ms
                ),
                out,
            );
        }
        if self.phase == Phase::Ready
            && now_us.saturating_sub(self.last_send_us) >= self.config.heartbeat_interval_ms * 1000
        {
            let heartbeat =
                self.session
                    .control(Command::Heartbeat, false, ErrorCode::Ok, Body::Empty);
            self.send(now_us, heartbeat, out);
        }
        if self.phase != Phase::Ready
            && !self.held.is_empty()
            && now_us.saturating_sub(self.last_recv_us) >= self.config.lease_ms * 1000
        {
            let mut lost: Vec<(LockRange, Mode)> =
                std::mem::take(&mut self.held).into_iter().collect();
            lost.sort_unstable();
            for (range, mode) in lost {
                out.push(ClientOutput::Lost(LockMsg { range, mode }));
            }
        }
    }

    /// The end of a batch of input: acknowledge what nothing else acked.
    pub fn flush(&mut self, now_us: u64, out: &mut Vec<ClientOutput>) {
        if self.phase == Phase::Ready && self.session.ack_pending() {
            let heartbeat =
                self.session
                    .control(Command::Heartbeat, false, ErrorCode::Ok, Body::Empty);
            self.send(now_us, heartbeat, out);
        }
    }

    fn greeting_reply(&mut self, now_us: u64, frame: Frame, out: &mut Vec<ClientOutput>) {
        let reply = match (frame.command, frame.response, frame.body) {
            (Command::Greeting, true, Body::Greeting(reply)) => reply,
            _ => {
                return self.close(
                    format!("expected a greeting reply, received {:?}", frame.command),
                    out,
                )
            }
        };
        let refusal = match frame.error {
            ErrorCode::Ok if reply.version != PROTOCOL_VERSION => Some(format!(
                "server speaks protocol version {}, we speak {PROTOCOL_VERSION}",
                reply.version
            )),
            ErrorCode::Ok if reply.cluster_id != self.config.cluster_id => Some(format!(
                "server is in cluster {:#x}, we are in cluster {:#x}",
                reply.cluster_id, self.config.cluster_id
            )),
            ErrorCode::Ok => None,
            ErrorCode::ClusterMismatch => Some(format!(
                "server refused us: it is in cluster {:#x}, we are in cluster {:#x}",
                reply.cluster_id, self.config.cluster_id
            )),
            ErrorCode::VersionMismatch => Some(format!(
                "server refused us: it speaks protocol version {}, we speak {PROTOCOL_VERSION}",
                reply.version
            )),
            other => Some(format!("server refused the greeting with {other:?}")),
        };
        if let Some(reason) = refusal {
            out.push(ClientOutput::Refused(reason.clone()));
            return self.close(reason, out);
        }
        self.phase = Phase::Ready;
        let resumed = reply.resumed == 1 && reply.server_epoch == self.server_epoch;
        if resumed {
            match self.session.resend(reply.recv_seq) {
                Ok(frames) => {
                    for frame in frames {
                        self.send(now_us, frame, out);
                    }
                }
                Err(error) => return self.close(format!("resume: {error}"), out),
            }
        } else {
            self.start_over(now_us, reply.server_epoch, out);
        }
        out.push(ClientOutput::Ready { resumed });
    }

    /// The server does not know our session (it restarted, or our grace ran
    /// out): re-assert what we hold, then re-issue what was unanswered.
    fn start_over(&mut self, now_us: u64, server_epoch: u64, out: &mut Vec<ClientOutput>) {
        let unanswered = std::mem::replace(&mut self.session, Session::new()).unanswered_requests();
        self.generation += 1;
        self.server_epoch = server_epoch;
        let mut held: Vec<(LockRange, Mode)> = self.held.iter().map(|(r, m)| (*r, *m)).collect();
        held.sort_unstable();
        for (range, mode) in held {
            self.reissue(
                now_us,
                Command::Recover,
                Body::Lock(LockMsg { range, mode }),
                out,
            );
        }
        for request in unanswered {
            match (request.command, request.body) {
                (Command::Lock, Body::Lock(msg)) => {
                    if let Err(error) = self.request(now_us, msg, out) {
                        self.close(format!("re-issue: {error}"), out);
                    }
                }
                (Command::Invalidate, _) => {}
                (command, body) => self.reissue(now_us, command, body, out),
            }
        }
    }

    fn reissue(&mut self, now_us: u64, command: Command, body: Body, out: &mut Vec<ClientOutput>) {
        match self.session.request(command, body) {
            Ok(frame) => self.send_sequenced(now_us, frame, out),
            Err(error) => self.close(format!("re-issue: {error}"), out),
        }
    }

    fn received(&mut self, now_us: u64, received: Received, out: &mut Vec<ClientOutput>) {
        match received {
            Received::Duplicate | Received::Control(_) => {}
            Received::Request(request) => match (request.command, request.body) {
                (Command::Invalidate, Body::Lock(msg)) => {
                    let token = InvalidateToken {
                        generation: self.generation,
                        request_id: request.request_id,
                    };
                    out.push(ClientOutput::Invalidate(token, msg));
                }
                (command, _) => self.close(format!("server sent a {command:?} request"), out),
            },
            Received::Response {
                request,
                response,
                tag,
            } => self.response(now_us, request, response, tag == TAG_DOWNGRADE, out),
        }
    }

    fn response(
        &mut self,
        _now_us: u64,
        request: Frame,
        response: Frame,
        downgrade: bool,
        out: &mut Vec<ClientOutput>,
    ) {
        let asked = request.lock_msg();
        match (request.command, asked, response.error, response.body) {
            (Command::Lock, Some(_), ErrorCode::Ok, Body::Lock(granted)) => {
                // A downgrade took effect when sent, and its grant must not
                // raise the mode again: an invalidation may have lowered it
                // further since.
                if !downgrade {
                    self.set_held(granted.range, granted.mode);
                }
                out.push(ClientOutput::Granted(granted));
            }
            (Command::Lock, Some(asked), error, _) => out.push(ClientOutput::Failed(asked, error)),
            (Command::Recover, Some(_), ErrorCode::Ok, _) => {}
            (Command::Recover, Some(asked), _, _) => {
                let lost = LockMsg {
                    range: asked.range,
                    mode: self.held(&asked.range),
                };
                self.set_held(asked.range, Mode::Null);
                out.push(ClientOutput::Lost(lost));
            }
            (Command::Stat, _, _, Body::Stats(stats)) => out.push(ClientOutput::Stats(*stats)),
            (Command::Farewell, _, _, _) => {
                self.phase = Phase::Ended;
                out.push(ClientOutput::FarewellDone);
            }
            (command, _, _, _) => self.close(format!("unexpected {command:?} response"), out),
        }
    }

    fn set_held(&mut self, range: LockRange, mode: Mode) {
        if mode == Mode::Null {
            self.held.remove(&range);
        } else {
            self.held.insert(range, mode);
        }
    }

    fn close(&mut self, reason: String, out: &mut Vec<ClientOutput>) {
        if self.phase != Phase::Disconnected {
            self.phase = Phase::Disconnected;
            out.push(ClientOutput::Close(reason));
        }
    }

    fn send_sequenced(&mut self, now_us: u64, frame: Frame, out: &mut Vec<ClientOutput>) {
        if self.phase == Phase::Ready {
            self.send(now_us, frame, out);
        }
    }

    fn send(&mut self, now_us: u64, frame: Frame, out: &mut Vec<ClientOutput>) {
        self.last_send_us = now_us;
        out.push(ClientOutput::Send(self.session.stamp(frame)));
    }
}
