//! Two peers that flood each other cannot deadlock: each queues 100,000
//! requests before reading anything and answers every request it receives,
//! far more than the socket buffers hold in either direction. With a reader
//! that wrote its answers itself, both sides would block in write with full
//! buffers; with the net layer's reader/writer split both finish.

use std::time::Duration;

use lockd::net::{spawn_conn, ConnEvent, Outbox, Received, Session, Stream};
use lockd::wire::{Body, Command, ErrorCode, LockMsg, LockRange, Mode};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;

const REQUESTS: u64 = 100_000;

/// One peer: queue every request, then answer and collect until all of ours
/// are answered. Returns how many of the peer's requests it answered.
async fn flood(stream: Stream) -> u64 {
    let (events_tx, mut events) = mpsc::channel::<ConnEvent>(16);
    let outbox = Outbox::new();
    spawn_conn(stream, 1, outbox.clone(), events_tx);
    let mut session = Session::new();
    let mut staging = Vec::new();
    for i in 0..REQUESTS {
        let msg = LockMsg {
            range: LockRange::new(0, i, i),
            mode: Mode::Write,
        };
        let frame = session.request(Command::Lock, Body::Lock(msg)).unwrap();
        session
            .stamp(frame)
            .encode_into(session.recv_seq(), &mut staging);
    }
    outbox.append(&mut staging);
    let (mut answered, mut responses) = (0u64, 0u64);
    while responses < REQUESTS || answered < REQUESTS {
        let Some(ConnEvent::Frames(_, frames)) = events.recv().await else {
            panic!("connection ended early");
        };
        for frame in frames {
            match session.receive(frame).unwrap() {
                Received::Request(request) => {
                    let response = session
                        .respond(
                            request.request_id,
                            Command::Lock,
                            ErrorCode::Ok,
                            request.body,
                        )
                        .unwrap();
                    session
                        .stamp(response)
                        .encode_into(session.recv_seq(), &mut staging);
                    answered += 1;
                }
                Received::Response { request, response } => {
                    assert_eq!(request.body, response.body);
                    responses += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        outbox.append(&mut staging);
    }
    outbox.close();
    answered
}

async fn both(a: Stream, b: Stream) {
    let (a, b) = (tokio::spawn(flood(a)), tokio::spawn(flood(b)));
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        (a.await.unwrap(), b.await.unwrap())
    })
    .await;
    assert_eq!(
        finished.expect("the peers deadlocked"),
        (REQUESTS, REQUESTS)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_flooding_each_other_over_tcp_finish() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    both(
        Stream::Tcp(connected.unwrap()),
        Stream::Tcp(accepted.unwrap().0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_flooding_each_other_over_a_unix_socket_finish() {
    let (a, b) = UnixStream::pair().unwrap();
    both(Stream::Unix(a), Stream::Unix(b)).await;
}
