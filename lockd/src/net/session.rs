//! One peer's session: sequence numbers, cumulative acks, requests awaiting a
//! response (by request id) and responses awaiting an ack (by send seq).
//!
//! Seed 000: with tens of thousands of messages in flight both lookups must be
//! O(log n), so both live in ordered maps ([`SeqMap`]: the keys are ours and
//! increase, so a sorted ring buffer); an ack frees every response at or below
//! it from the front. A session outlives connections: after a
//! reconnect [`Session::resend`] yields what the peer has not yet received, and
//! [`Session::receive`] drops what we already had by seq.

use super::seqmap::SeqMap;
use crate::wire::{Body, Command, ErrorCode, Frame};

/// Requests one side may have unanswered: bounds the request map (the client
/// library waits for room; a server never has more than its locks held by one
/// client in invalidation).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1 << 17;
/// Responses awaiting an ack: every request carries an ack, so a well-behaved
/// peer never lets more than its in-flight requests pile up here.
pub const RESPONSES_UNACKED_MAX: usize = REQUESTS_IN_FLIGHT_MAX * 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("sequence gap: expected seq {expected}, received {received}")]
    SequenceGap { expected: u64, received: u64 },
    #[error("ack {ack} is beyond the last seq sent {sent}")]
    AckBeyondSent { ack: u64, sent: u64 },
    #[error("response to unknown request id {0}")]
    UnknownResponse(u64),
    #[error("too many requests in flight ({0})")]
    TooManyRequests(usize),
    #[error("too many unacked responses ({0})")]
    TooManyResponses(usize),
    #[error("sequenced {0:?} frame, which must be unsequenced")]
    BadSequencing(Command),
}

/// What a received frame means to the session's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Already received before a reconnect (seq at or below ours): dropped.
    Duplicate,
    /// A control frame (greeting, heartbeat): unsequenced, only its ack counted.
    Control(Frame),
    /// A new request from the peer; answer it with [`Session::respond`].
    Request(Frame),
    /// The response to one of our requests, with the request it answers
    /// and the tag it was sent with.
    Response {
        request: Frame,
        response: Frame,
        tag: u8,
    },
}

#[derive(Debug, Default)]
pub struct Session {
    /// The seq the next sequenced frame gets (seqs start at 1; 0 = unsequenced).
    next_seq: u64,
    next_request_id: u64,
    /// The highest seq received from the peer; frames arrive in seq order.
    recv_seq: u64,
    /// The highest ack we have put on the wire.
    ack_sent: u64,
    /// The highest ack received: the peer has every frame at or below it.
    peer_acked: u64,
    /// Keyed by request id. With each request, a tag of its owner's (e.g.
    /// "this was a downgrade"), handed back with the response: no second map
    /// keyed by request id.
    requests: SeqMap<SentRequest>,
    /// Keyed by send seq.
    responses: SeqMap<SentResponse>,
}

/// What the request map keeps of a request: enough to rebuild the frame for a
/// resend. Not the frame itself: the ack is stamped afresh on every send, and
/// with tens of thousands in flight every byte of an entry is a byte of cache
/// (48 bytes here against 80 for a frame and its tag).
#[derive(Debug, Clone)]
struct SentRequest {
    seq: u64,
    body: Body,
    command: Command,
    tag: u8,
}

impl SentRequest {
    #[inline]
    fn frame(&self, request_id: u64) -> Frame {
        Frame {
            seq: self.seq,
            ack: 0,
            request_id,
            command: self.command,
            response: false,
            error: ErrorCode::Ok,
            body: self.body.clone(),
        }
    }
}

/// What the response map keeps of a response (48 bytes against 72).
#[derive(Debug, Clone)]
struct SentResponse {
    request_id: u64,
    body: Body,
    command: Command,
    error: ErrorCode,
}

impl SentResponse {
    #[inline]
    fn frame(&self, seq: u64) -> Frame {
        Frame {
            seq,
            ack: 0,
            request_id: self.request_id,
            command: self.command,
            response: true,
            error: self.error,
            body: self.body.clone(),
        }
    }
}

impl Session {
    pub fn new() -> Session {
        Session {
            next_seq: 1,
            next_request_id: 1,
            ..Session::default()
        }
    }

    /// The cumulative ack to stamp on outgoing frames.
    pub fn recv_seq(&self) -> u64 {
        self.recv_seq
    }

    pub fn requests_in_flight(&self) -> usize {
        self.requests.len()
    }

    pub fn responses_unacked(&self) -> usize {
        self.responses.len()
    }

    /// Whether the peer has not yet been told of everything we received.
    pub fn ack_pending(&self) -> bool {
        self.ack_sent < self.recv_seq
    }

    /// Stamps the current cumulative ack on a frame about to be sent.
    #[inline]
    pub fn stamp(&mut self, mut frame: Frame) -> Frame {
        frame.ack = self.recv_seq;
        self.ack_sent = self.recv_seq;
        frame
    }

    /// An unsequenced control frame (heartbeat or greeting).
    pub fn control(&self, command: Command, response: bool, error: ErrorCode, body: Body) -> Frame {
        Frame {
            seq: 0,
            ack: self.recv_seq,
            request_id: 0,
            command,
            response,
            error,
            body,
        }
    }

    /// A new request, retained until its response arrives.
    pub fn request(&mut self, command: Command, body: Body) -> Result<Frame, SessionError> {
        self.request_tagged(command, body, 0)
    }

    /// A new request whose response comes back with `tag`.
    pub fn request_tagged(
        &mut self,
        command: Command,
        body: Body,
        tag: u8,
    ) -> Result<Frame, SessionError> {
        if self.requests.len() >= REQUESTS_IN_FLIGHT_MAX {
            return Err(SessionError::TooManyRequests(self.requests.len()));
        }
        let frame = Frame {
            seq: self.take_seq(),
            ack: self.recv_seq,
            request_id: self.next_request_id,
            command,
            response: false,
            error: ErrorCode::Ok,
            body,
        };
        self.next_request_id += 1;
        self.requests.push(
            frame.request_id,
            SentRequest {
                seq: frame.seq,
                body: frame.body.clone(),
                command,
                tag,
            },
        );
        Ok(frame)
    }

    /// The response to the peer's request `request_id`, retained until acked.
    pub fn respond(
        &mut self,
        request_id: u64,
        command: Command,
        error: ErrorCode,
        body: Body,
    ) -> Result<Frame, SessionError> {
        if self.responses.len() >= RESPONSES_UNACKED_MAX {
            return Err(SessionError::TooManyResponses(self.responses.len()));
        }
        let frame = Frame {
            seq: self.take_seq(),
            ack: self.recv_seq,
            request_id,
            command,
            response: true,
            error,
            body,
        };
        self.responses.push(
            frame.seq,
            SentResponse {
                request_id,
                body: frame.body.clone(),
                command,
                error,
            },
        );
        Ok(frame)
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Applies the peer's cumulative ack: frees every response at or below it
    /// in one range operation.
    pub fn acked(&mut self, ack: u64) -> Result<(), SessionError> {
        let sent = self.next_seq - 1;
        if ack > sent {
            return Err(SessionError::AckBeyondSent { ack, sent });
        }
        if ack > self.peer_acked {
            self.peer_acked = ack;
            if !self.responses.is_empty() {
                self.responses.remove_through(ack);
            }
        }
        Ok(())
    }

    /// Processes one received frame.
    pub fn receive(&mut self, frame: Frame) -> Result<Received, SessionError> {
        self.acked(frame.ack)?;
        let control = matches!(frame.command, Command::Greeting | Command::Heartbeat);
        if frame.seq == 0 {
            return if control {
                Ok(Received::Control(frame))
            } else {
                Err(SessionError::BadSequencing(frame.command))
            };
        }
        if control {
            return Err(SessionError::BadSequencing(frame.command));
        }
        if frame.seq <= self.recv_seq {
            return Ok(Received::Duplicate);
        }
        if frame.seq != self.recv_seq + 1 {
            return Err(SessionError::SequenceGap {
                expected: self.recv_seq + 1,
                received: frame.seq,
            });
        }
        self.recv_seq = frame.seq;
        if !frame.response {
            return Ok(Received::Request(frame));
        }
        match self.requests.remove(frame.request_id) {
            Some(sent) => Ok(Received::Response {
                request: sent.frame(frame.request_id),
                tag: sent.tag,
                response: frame,
            }),
            None => Err(SessionError::UnknownResponse(frame.request_id)),
        }
    }

    /// After a reconnect, given the highest seq the peer says it received:
    /// every retained frame above it, in seq order. Those are exactly the
    /// frames sent after it (responses at or below are freed as acked, and
    /// requests above it cannot have been answered), so the peer sees no gap.
    pub fn resend(&mut self, peer_recv_seq: u64) -> Result<Vec<Frame>, SessionError> {
        self.acked(peer_recv_seq)?;
        let mut frames: Vec<Frame> = self
            .requests
            .iter()
            .filter(|(_, sent)| sent.seq > peer_recv_seq)
            .map(|(request_id, sent)| sent.frame(request_id))
            .chain(self.responses.iter().map(|(seq, sent)| sent.frame(seq)))
            .collect();
        frames.sort_unstable_by_key(|frame| frame.seq);
        debug_assert!(frames
            .iter()
            .enumerate()
            .all(|(i, f)| f.seq == peer_recv_seq + 1 + i as u64));
        Ok(frames)
    }

    /// Requests sent and not answered, in the order they were sent: what a
    /// client re-issues as new requests when the server lost the session.
    pub fn unanswered_requests(&self) -> Vec<Frame> {
        let mut frames: Vec<Frame> = self
            .requests
            .iter()
            .map(|(request_id, sent)| sent.frame(request_id))
            .collect();
        frames.sort_unstable_by_key(|frame| frame.seq);
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{LockMsg, LockRange, Mode};

    fn lock(start: u64) -> Body {
        Body::Lock(LockMsg {
            range: LockRange::new(0, start, start),
            mode: Mode::Write,
        })
    }

    #[test]
    fn retained_entries_stay_small() {
        // Tens of thousands sit in each map: no full frames there.
        assert!(std::mem::size_of::<SentRequest>() <= 48);
        assert!(std::mem::size_of::<SentResponse>() <= 48);
    }

    #[test]
    fn an_ack_frees_every_response_at_or_below_it() {
        let mut server = Session::new();
        let mut client = Session::new();
        for i in 0..10 {
            let request = client.request(Command::Lock, lock(i)).unwrap();
            let Received::Request(request) = server.receive(request).unwrap() else {
                panic!("not a request")
            };
            server
                .respond(
                    request.request_id,
                    Command::Lock,
                    ErrorCode::Ok,
                    request.body,
                )
                .unwrap();
        }
        assert_eq!(server.responses_unacked(), 10);
        server.acked(6).unwrap();
        assert_eq!(server.responses_unacked(), 4);
        assert_eq!(
            server.acked(100),
            Err(SessionError::AckBeyondSent { ack: 100, sent: 10 })
        );
    }

    #[test]
    fn resent_frames_continue_the_stream_and_duplicates_are_dropped() {
        let mut server = Session::new();
        let mut client = Session::new();
        let sent: Vec<Frame> = (0..5)
            .map(|i| client.request(Command::Lock, lock(i)).unwrap())
            .collect();
        // The server got the first two; the connection died.
        for frame in &sent[..2] {
            assert!(matches!(
                server.receive(frame.clone()),
                Ok(Received::Request(_))
            ));
        }
        let resent = client.resend(server.recv_seq()).unwrap();
        assert_eq!(
            resent.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(server.receive(sent[1].clone()), Ok(Received::Duplicate));
        for frame in resent {
            assert!(matches!(server.receive(frame), Ok(Received::Request(_))));
        }
        let mut skipped = sent[4].clone();
        skipped.seq = 9;
        assert_eq!(
            server.receive(skipped),
            Err(SessionError::SequenceGap {
                expected: 6,
                received: 9
            })
        );
    }

    #[test]
    fn a_response_completes_its_request_once() {
        let mut server = Session::new();
        let mut client = Session::new();
        let request = client.request(Command::Lock, lock(1)).unwrap();
        server.receive(request.clone()).unwrap();
        let response = server
            .respond(
                request.request_id,
                Command::Lock,
                ErrorCode::Ok,
                request.body,
            )
            .unwrap();
        assert!(matches!(
            client.receive(response.clone()),
            Ok(Received::Response { .. })
        ));
        assert_eq!(client.requests_in_flight(), 0);
        let mut stray = response;
        stray.seq = 2;
        assert_eq!(
            client.receive(stray),
            Err(SessionError::UnknownResponse(request.request_id))
        );
    }
}
