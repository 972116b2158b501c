//! The end of a session: once the server has answered a client's farewell
//! the session is gone, so the client must send nothing more on that
//! connection (an ack of the answer, a heartbeat): the server would take
//! it for a greeting gone wrong and close the connection as a protocol
//! error. Every `lockd stat` ended that way, with a warning in the
//! daemon's log. The cores are driven directly, frames delivered at once.

use lockd::client::{ClientConfig, ClientCore, ClientOutput};
use lockd::server::{ServerConfig, ServerCore, ServerInput, ServerOutput};

const CONN: u64 = 1;

/// One client connected to one server, everything in memory.
struct Pair {
    now_us: u64,
    server: ServerCore,
    client: ClientCore,
    /// Frames the client sent after `mark_sent`.
    sent: usize,
    farewell_done: bool,
    /// Why the server closed the connection, if it did.
    closed: Vec<String>,
}

impl Pair {
    fn connected() -> Pair {
        let mut pair = Pair {
            now_us: 0,
            server: ServerCore::new(ServerConfig::new(7), 1, 0),
            client: ClientCore::new(ClientConfig::new(7, 42)),
            sent: 0,
            farewell_done: false,
            closed: Vec::new(),
        };
        let mut out = Vec::new();
        pair.server
            .handle(0, ServerInput::Connected(CONN), &mut out);
        pair.deliver_to_client(out);
        let mut out = Vec::new();
        pair.client.connected(0, &mut out);
        pair.deliver_to_server(out);
        assert!(pair.client.is_ready(), "the greeting went through");
        assert!(pair.closed.is_empty(), "{:?}", pair.closed);
        pair
    }

    /// Delivers the client's output to the server, and on until quiet.
    fn deliver_to_server(&mut self, out: Vec<ClientOutput>) {
        let mut frames = Vec::new();
        for output in out {
            match output {
                ClientOutput::Send(frame) => frames.push(frame),
                ClientOutput::FarewellDone => self.farewell_done = true,
                ClientOutput::Close(reason) => panic!("the client closed: {reason}"),
                _ => {}
            }
        }
        self.sent += frames.len();
        let mut out = Vec::new();
        for frame in frames {
            self.server
                .handle(self.now_us, ServerInput::Frame(CONN, frame), &mut out);
        }
        self.server
            .handle(self.now_us, ServerInput::Flush, &mut out);
        self.deliver_to_client(out);
    }

    /// Delivers the server's output to the client, and on until quiet
    /// (the client flushes after a batch of input, as its task does).
    fn deliver_to_client(&mut self, out: Vec<ServerOutput>) {
        let mut replies = Vec::new();
        let mut delivered = 0;
        for output in out {
            match output {
                ServerOutput::Send(_, frame) => {
                    delivered += 1;
                    self.client.receive(self.now_us, frame, &mut replies)
                }
                ServerOutput::Close(_, reason) => self.closed.push(reason),
            }
        }
        if delivered > 0 {
            self.client.flush(self.now_us, &mut replies);
        }
        if !replies.is_empty() {
            self.deliver_to_server(replies);
        }
    }

    /// Time passes: both sides tick (heartbeats, timeouts).
    fn tick(&mut self, by_us: u64) {
        self.now_us += by_us;
        let mut out = Vec::new();
        self.client.tick(self.now_us, &mut out);
        self.deliver_to_server(out);
        let mut out = Vec::new();
        self.server.handle(self.now_us, ServerInput::Tick, &mut out);
        self.deliver_to_client(out);
    }
}

#[test]
fn after_the_farewell_answer_the_client_sends_nothing() {
    let mut pair = Pair::connected();
    // A session in use first: a stat, as `lockd stat` does, and ticks.
    let mut out = Vec::new();
    pair.client.stat(pair.now_us, &mut out).unwrap();
    pair.deliver_to_server(out);
    pair.tick(600_000);

    let mut out = Vec::new();
    pair.client.farewell(pair.now_us, &mut out).unwrap();
    let before = pair.sent;
    pair.deliver_to_server(out);
    assert!(pair.farewell_done, "the server answered the farewell");
    assert_eq!(pair.sent, before + 1, "only the farewell itself went out");
    // Heartbeat intervals and timeouts pass: still nothing sent, and the
    // server never closes the connection over a frame it did not expect.
    for _ in 0..20 {
        pair.tick(500_000);
    }
    assert_eq!(pair.sent, before + 1, "the client spoke after its farewell");
    assert!(
        pair.closed.iter().all(|why| !why.contains("expected")),
        "{:?}",
        pair.closed
    );
}
