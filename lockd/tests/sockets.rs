//! The daemon and client library on real loopback sockets: contending clients
//! never hold incompatible modes, an invalidation waits for the holder's
//! guards and its work before the lock moves, the cache gives back idle locks
//! beyond its limit, a disconnected client keeps its locks until it resumes
//! (or its grace period ends; farewell releases at once), a restarted server
//! learns held locks from re-asserting clients, malformed frames and a wrong
//! cluster id close only their own connection, a client that never reads
//! does not hold up anyone else, and one that never acks is cut off at the
//! bound on unacked responses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockd::client::{ClientConfig, InvalidateFn, LockClient, LockClientConfig, LockError};
use lockd::net::Endpoint;
use lockd::server::{run, DaemonHandle, ServerConfig};
use lockd::wire::{
    decode, Body, Command, ErrorCode, Frame, Greeting, LockMsg, LockRange, Mode, GREETING_MAGIC,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CLUSTER: u64 = 0xc1u64;
/// A bound on a whole scenario: reaching it means a hang, which fails the test.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

fn server_config(grace_ms: u64, recovery_ms: u64) -> ServerConfig {
    ServerConfig {
        cluster_id: CLUSTER,
        grace_ms,
        heartbeat_interval_ms: 200,
        heartbeat_timeout_ms: 2_000,
        recovery_ms,
    }
}

async fn start_server(addr: &str, config: ServerConfig) -> DaemonHandle {
    let endpoint = Endpoint::parse(addr).unwrap();
    run(endpoint.bind().await.unwrap(), config).unwrap()
}

fn client_config(
    endpoint: &Endpoint,
    client_id: u64,
    lease_ms: u64,
    on_invalidate: Option<InvalidateFn>,
) -> LockClientConfig {
    LockClientConfig {
        endpoint: endpoint.clone(),
        core: ClientConfig {
            cluster_id: CLUSTER,
            client_id,
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 1_000,
            lease_ms,
        },
        cache_locks_max: 2,
        on_invalidate,
    }
}

type Log = Arc<Mutex<Vec<String>>>;
/// Which client uses which mode on each range right now (guards alive).
type InUse = Arc<Mutex<BTreeMap<LockRange, Vec<(u64, Mode)>>>>;

fn recorder(name: &'static str, log: Log) -> InvalidateFn {
    Arc::new(move |range, from, to| {
        let log = log.clone();
        Box::pin(async move {
            log.lock()
                .unwrap()
                .push(format!("{name} {}: {from:?}->{to:?}", range.start));
        })
    })
}

fn range(start: u64) -> LockRange {
    LockRange::new(7, start, start + 9)
}

/// A TCP proxy whose connections the test can cut, and which can refuse
/// new ones: a network the test controls.
struct Proxy {
    endpoint: Endpoint,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refusing: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: Endpoint) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::Tcp(listener.local_addr().unwrap());
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let (task_conns, task_refusing) = (conns.clone(), refusing.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = listener.accept().await.unwrap();
                if task_refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let Endpoint::Tcp(addr) = target else {
                    unreachable!()
                };
                let Ok(mut outbound) = TcpStream::connect(addr).await else {
                    continue;
                };
                task_conns.lock().unwrap().push(tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }));
            }
        });
        Proxy {
            endpoint,
            conns,
            refusing,
        }
    }

    /// Drops every connection through the proxy, in both directions, and
    /// waits until no copying task runs; returns how many there were.
    async fn cut(&self) -> usize {
        let conns: Vec<JoinHandle<()>> = self.conns.lock().unwrap().drain(..).collect();
        for conn in &conns {
            conn.abort();
        }
        let count = conns.len();
        for conn in conns {
            let _ = conn.await;
        }
        count
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_clients_never_hold_incompatible_modes() {
    let server = start_server("127.0.0.1:0", server_config(10_000, 0)).await;
    let log: Log = Arc::default();
    let in_use: InUse = Arc::default();
    // Every client connects before any starts, and all start together:
    // otherwise the first can finish and say farewell before the last has
    // connected, and nothing contends.
    let start = Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for id in 1..=4u64 {
        let client = LockClient::connect(client_config(
            server.endpoint(),
            id,
            4_000,
            Some(recorder("c", log.clone())),
        ))
        .await
        .unwrap();
        let in_use = in_use.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let modes = [Mode::Read, Mode::WriteOnly, Mode::Write];
            for i in 0..60u64 {
                let (lock, mode) = (range((i * 7 + id) % 3 * 10), modes[((i + id) % 3) as usize]);
                let guard = client.take(lock, mode).await.unwrap();
                {
                    let mut in_use = in_use.lock().unwrap();
                    let users = in_use.entry(lock).or_default();
                    for &(other, other_mode) in users.iter() {
                        assert!(
                            other == id || mode.compatible(other_mode),
                            "client {id} {mode:?} with client {other} {other_mode:?} on {lock:?}"
                        );
                    }
                    users.push((id, mode));
                }
                tokio::task::yield_now().await;
                in_use
                    .lock()
                    .unwrap()
                    .get_mut(&lock)
                    .unwrap()
                    .retain(|&(c, m)| (c, m) != (id, mode));
                drop(guard);
            }
            client.farewell().await.unwrap();
        }));
    }
    tokio::time::timeout(SCENARIO_LIMIT, async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await
    .expect("contending clients hung");
    assert!(
        !log.lock().unwrap().is_empty(),
        "no invalidation happened: nothing contended"
    );
    let stats = server.stats().await.unwrap();
    assert_eq!(
        (stats.sessions, stats.locks),
        (0, 0),
        "farewell left state behind: {stats:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_keeps_its_locks_and_resumes() {
    let server = start_server("127.0.0.1:0", server_config(30_000, 0)).await;
    let proxy = Proxy::start(server.endpoint().clone()).await;
    let log: Log = Arc::default();
    let a = LockClient::connect(client_config(
        &proxy.endpoint,
        1,
        20_000,
        Some(recorder("a", log.clone())),
    ))
    .await
    .unwrap();
    let b = LockClient::connect(client_config(server.endpoint(), 2, 20_000, None))
        .await
        .unwrap();
    drop(a.take(range(0), Mode::Write).await.unwrap());
    proxy.refusing.store(true, Ordering::SeqCst);
    assert_eq!(proxy.cut().await, 1);
    let b_log = log.clone();
    let waiter = tokio::spawn(async move {
        let guard = b.take(range(0), Mode::Write).await.unwrap();
        b_log.lock().unwrap().push("b granted".into());
        drop(guard);
        b
    });
    // While a cannot reach the server, b's request can only wait: the server
    // needs a's answer. Let a's reconnect attempts fail for a while.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        log.lock().unwrap().is_empty(),
        "lock moved while its holder was disconnected: {:?}",
        log.lock().unwrap()
    );
    proxy.refusing.store(false, Ordering::SeqCst);
    let b = tokio::time::timeout(SCENARIO_LIMIT, waiter)
        .await
        .expect("b never granted")
        .unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec!["a 0: Write->Null".to_string(), "b granted".to_string()]
    );
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.sessions, 2, "a's session was not resumed: {stats:?}");
    a.farewell().await.unwrap();
    b.farewell().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_expiry_releases_a_vanished_clients_locks() {
    let server = start_server("127.0.0.1:0", server_config(500, 0)).await;
    let proxy = Proxy::start(server.endpoint().clone()).await;
    let log: Log = Arc::default();
    // lease < grace - heartbeat timeout: a gives up before the server does.
    let mut config = client_config(&proxy.endpoint, 1, 100, Some(recorder("a", log.clone())));
    config.core.heartbeat_timeout_ms = 300;
    let a = LockClient::connect(config).await.unwrap();
    drop(a.take(range(0), Mode::Write).await.unwrap());
    proxy.refusing.store(true, Ordering::SeqCst);
    assert_eq!(proxy.cut().await, 1);
    let b = LockClient::connect(client_config(server.endpoint(), 2, 20_000, None))
        .await
        .unwrap();
    let guard = tokio::time::timeout(SCENARIO_LIMIT, b.take(range(0), Mode::Write))
        .await
        .expect("grace never ended")
        .unwrap();
    assert!(
        log.lock().unwrap().is_empty(),
        "a answered an invalidation it could not receive"
    );
    drop(guard);
    b.farewell().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farewell_releases_at_once() {
    // A grace period far beyond the scenario limit: only farewell can release.
    let server = start_server("127.0.0.1:0", server_config(3_600_000, 0)).await;
    let a = LockClient::connect(client_config(server.endpoint(), 1, 20_000, None))
        .await
        .unwrap();
    let b = LockClient::connect(client_config(server.endpoint(), 2, 20_000, None))
        .await
        .unwrap();
    let held = a.take(range(0), Mode::Write).await.unwrap();
    std::mem::forget(held); // a never gives it back by itself
    a.farewell().await.unwrap();
    let guard = tokio::time::timeout(SCENARIO_LIMIT, b.take(range(0), Mode::Write))
        .await
        .expect("farewell did not release")
        .unwrap();
    drop(guard);
    b.farewell().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_learns_held_locks_from_clients() {
    let first = start_server("127.0.0.1:0", server_config(30_000, 0)).await;
    let addr = first.endpoint().to_string();
    let log: Log = Arc::default();
    let a = LockClient::connect(client_config(
        first.endpoint(),
        1,
        20_000,
        Some(recorder("a", log.clone())),
    ))
    .await
    .unwrap();
    drop(a.take(range(0), Mode::Write).await.unwrap());
    drop(a.take(range(10), Mode::Read).await.unwrap());
    first.shutdown().await;
    let second = start_server(&addr, server_config(30_000, 3_000)).await;
    tokio::time::timeout(SCENARIO_LIMIT, async {
        while second.stats().await.unwrap().locks < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a never re-asserted its locks");
    let b = LockClient::connect(client_config(second.endpoint(), 2, 20_000, None))
        .await
        .unwrap();
    let work = async {
        drop(b.take(range(0), Mode::Read).await.unwrap());
        drop(b.take(range(10), Mode::Write).await.unwrap());
    };
    tokio::time::timeout(SCENARIO_LIMIT, work)
        .await
        .expect("b never granted");
    let mut seen = log.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "a 0: Write->Read".to_string(),
            "a 10: Read->Null".to_string()
        ]
    );
    a.farewell().await.unwrap();
    b.farewell().await.unwrap();
    second.shutdown().await;
}

fn greeting_bytes(cluster_id: u64, client_id: u64) -> Vec<u8> {
    let greeting = Greeting {
        magic: GREETING_MAGIC,
        version: PROTOCOL_VERSION,
        resumed: 0,
        cluster_id,
        client_id,
        server_epoch: 0,
        recv_seq: 0,
    };
    let frame = Frame {
        seq: 0,
        ack: 0,
        request_id: 0,
        command: Command::Greeting,
        response: false,
        error: ErrorCode::Ok,
        body: Body::Greeting(Box::new(greeting)),
    };
    let mut bytes = Vec::new();
    frame.encode_into(0, &mut bytes);
    bytes
}

/// Appends the `i`-th request of a raw flood: a lock of point `i` of zone
/// 1, acking nothing (ack 0), as the client library never would.
fn encode_lock_request(i: u64, mode: Mode, bytes: &mut Vec<u8>) {
    let frame = Frame {
        seq: i + 1,
        ack: 0,
        request_id: i + 1,
        command: Command::Lock,
        response: false,
        error: ErrorCode::Ok,
        body: Body::Lock(LockMsg {
            range: LockRange::new(1, i, i),
            mode,
        }),
    };
    frame.encode_into(0, bytes);
}

/// Connects, greets, and returns the stream and the server's first reply.
async fn raw_greeted(endpoint: &Endpoint, cluster_id: u64, client_id: u64) -> (TcpStream, Frame) {
    let Endpoint::Tcp(addr) = endpoint else {
        unreachable!()
    };
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&greeting_bytes(cluster_id, client_id))
        .await
        .unwrap();
    let mut buf = vec![0u8; 80];
    stream.read_exact(&mut buf).await.unwrap();
    let (frame, _) = decode(&buf).unwrap().unwrap();
    (stream, frame)
}

/// Reads until the server closes the connection.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    matches!(
        tokio::time::timeout(SCENARIO_LIMIT, stream.read_to_end(&mut sink)).await,
        Ok(Ok(_)) | Ok(Err(_))
    )
}

fn header(command: u8, len: u32) -> Vec<u8> {
    let mut bytes = 1u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 16]);
    bytes.extend_from_slice(&[command, 0, 0, 0]);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let server = start_server("127.0.0.1:0", server_config(10_000, 0)).await;
    let good = LockClient::connect(client_config(server.endpoint(), 1, 4_000, None))
        .await
        .unwrap();
    drop(good.take(range(0), Mode::Write).await.unwrap());
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "bad length",
            {
                let mut b = header(3, 8);
                b.extend_from_slice(&[0u8; 8]);
                b
            },
            false,
        ),
        ("unknown command", header(99, 0), false),
        ("truncated header", header(3, 32)[..10].to_vec(), true),
        ("oversized payload", header(3, 1 << 20), false),
    ];
    for (index, (name, bytes, then_close)) in cases.into_iter().enumerate() {
        let (mut stream, reply) = raw_greeted(server.endpoint(), CLUSTER, 100 + index as u64).await;
        assert_eq!(
            (reply.command, reply.error),
            (Command::Greeting, ErrorCode::Ok),
            "{name}"
        );
        stream.write_all(&bytes).await.unwrap();
        if then_close {
            stream.shutdown().await.unwrap();
        }
        assert!(
            closed_by_server(&mut stream).await,
            "{name}: connection left open"
        );
        // Everyone else carries on.
        let guard = tokio::time::timeout(
            SCENARIO_LIMIT,
            good.take(range(10 * (index as u64 + 1)), Mode::Write),
        )
        .await
        .expect(name)
        .unwrap();
        drop(guard);
    }
    let stats = server.stats().await.unwrap();
    assert_eq!(stats.clients_connected, 1, "{stats:?}");
    good.farewell().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cluster_id_or_version_is_refused_on_both_sides() {
    let server = start_server("127.0.0.1:0", server_config(10_000, 0)).await;
    let mut config = client_config(server.endpoint(), 1, 4_000, None);
    config.core.cluster_id = CLUSTER + 1;
    match LockClient::connect(config).await {
        Err(LockError::Refused(reason)) => assert!(reason.contains("cluster"), "{reason}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a client of another cluster was accepted"),
    }
    // Another protocol version is refused the same way.
    let Endpoint::Tcp(addr) = server.endpoint() else {
        unreachable!()
    };
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut greeting = greeting_bytes(CLUSTER, 8);
    greeting[32 + 8..32 + 12].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    stream.write_all(&greeting).await.unwrap();
    let mut buf = vec![0u8; 80];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        decode(&buf).unwrap().unwrap().0.error,
        ErrorCode::VersionMismatch
    );
    assert!(closed_by_server(&mut stream).await);
    let (mut stream, reply) = raw_greeted(server.endpoint(), CLUSTER + 1, 9).await;
    assert_eq!(reply.error, ErrorCode::ClusterMismatch);
    assert!(matches!(reply.body, Body::Greeting(g) if g.cluster_id == CLUSTER));
    assert!(closed_by_server(&mut stream).await);
    assert_eq!(server.stats().await.unwrap().sessions, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_block_others() {
    let server = start_server("127.0.0.1:0", server_config(10_000, 0)).await;
    let (mut stream, _) = raw_greeted(server.endpoint(), CLUSTER, 99).await;
    const REQUESTS: u64 = 100_000;
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    // Floods requests whose responses it never reads.
    let flood = tokio::spawn(async move {
        let mut bytes = Vec::new();
        for i in 0..REQUESTS {
            encode_lock_request(i, Mode::Write, &mut bytes);
            if bytes.len() >= 64 * 1024 {
                stream.write_all(&bytes).await.unwrap();
                bytes.clear();
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
        stream.write_all(&bytes).await.unwrap();
        stream
    });
    let stream = tokio::time::timeout(SCENARIO_LIMIT, flood)
        .await
        .expect("the server stopped reading")
        .unwrap();
    let good = LockClient::connect(client_config(server.endpoint(), 1, 4_000, None))
        .await
        .unwrap();
    let work = async {
        for i in 0..50 {
            drop(good.take(range(1000 + i * 10), Mode::Write).await.unwrap());
        }
    };
    tokio::time::timeout(SCENARIO_LIMIT, work)
        .await
        .expect("a client that never reads blocked the others");
    // And the daemon kept reading the flooder: every request gets processed
    // even though none of the answers can be delivered.
    tokio::time::timeout(SCENARIO_LIMIT, async {
        while server.stats().await.unwrap().grants_total < REQUESTS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the daemon stopped processing the flooding client");
    drop(stream);
    good.farewell().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_daemon_serves_locks_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockd.sock");
    let server = start_server(
        &format!("unix:{}", path.display()),
        server_config(10_000, 0),
    )
    .await;
    let a = LockClient::connect(client_config(server.endpoint(), 1, 4_000, None))
        .await
        .unwrap();
    let b = LockClient::connect(client_config(server.endpoint(), 2, 4_000, None))
        .await
        .unwrap();
    drop(a.take(range(0), Mode::Write).await.unwrap());
    let guard = tokio::time::timeout(SCENARIO_LIMIT, b.take(range(0), Mode::Read))
        .await
        .expect("hung")
        .unwrap();
    drop(guard);
    a.farewell().await.unwrap();
    b.farewell().await.unwrap();
    server.shutdown().await;
    assert!(!path.exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_waits_for_guards_and_the_holders_work() {
    let server = start_server("127.0.0.1:0", server_config(10_000, 0)).await;
    let log: Log = Arc::default();
    let work_log = log.clone();
    let commit: InvalidateFn = Arc::new(move |_range, from, to| {
        let log = work_log.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            log.lock()
                .unwrap()
                .push(format!("a committed {from:?}->{to:?}"));
        })
    });
    let a = LockClient::connect(client_config(server.endpoint(), 1, 4_000, Some(commit)))
        .await
        .unwrap();
    let b = LockClient::connect(client_config(server.endpoint(), 2, 4_000, None))
        .await
        .unwrap();
    let guard = a.take(range(0), Mode::Write).await.unwrap();
    let b_log = log.clone();
    let waiter = tokio::spawn(async move {
        let guard = b.take(range(0), Mode::Read).await.unwrap();
        b_log.lock().unwrap().push("b granted".into());
        drop(guard);
        b
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    log.lock().unwrap().push("a dropped its guard".into());
    drop(guard);
    let b = tokio::time::timeout(SCENARIO_LIMIT, waiter)
        .await
        .expect("b never granted")
        .unwrap();
    let expected = [
        "a dropped its guard",
        "a committed Write->Read",
        "b granted",
    ];
    assert_eq!(*log.lock().unwrap(), expected.map(String::from).to_vec());
    a.farewell().await.unwrap();
    b.farewell().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_gives_back_idle_locks_beyond_its_limit() {
    let server = start_server("127.0.0.1:0", server_config(10_000, 0)).await;
    let a = LockClient::connect(client_config(server.endpoint(), 1, 4_000, None))
        .await
        .unwrap();
    for i in 0..6 {
        drop(a.take(range(i * 10), Mode::Read).await.unwrap());
    }
    // The limit is 2: the four least recently used go back to the server.
    tokio::time::timeout(SCENARIO_LIMIT, async {
        while server.stats().await.unwrap().locks != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("idle locks were not given back");
    // The two kept are the most recent: taking them again needs no server.
    let grants = server.stats().await.unwrap().grants_total;
    drop(a.take(range(40), Mode::Read).await.unwrap());
    drop(a.take(range(50), Mode::Read).await.unwrap());
    assert_eq!(server.stats().await.unwrap().grants_total, grants);
    a.farewell().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acks_is_cut_off_at_the_bound() {
    use lockd::net::RESPONSES_UNACKED_MAX;
    let server = start_server("127.0.0.1:0", server_config(10_000, 0)).await;
    let (stream, _) = raw_greeted(server.endpoint(), CLUSTER, 98).await;
    let (mut read, mut write) = stream.into_split();
    let requests = RESPONSES_UNACKED_MAX as u64 + 1_000;
    // Every frame says ack 0: the server's unacked responses can only grow.
    let flood = tokio::spawn(async move {
        let mut bytes = Vec::new();
        for i in 0..requests {
            encode_lock_request(i, Mode::Read, &mut bytes);
            if bytes.len() >= 64 * 1024 {
                if write.write_all(&bytes).await.is_err() {
                    return;
                }
                bytes.clear();
            }
        }
        let _ = write.write_all(&bytes).await;
    });
    let mut sink = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(SCENARIO_LIMIT, async {
        while !matches!(read.read(&mut sink).await, Ok(0) | Err(_)) {}
    })
    .await;
    assert!(closed.is_ok(), "the server kept a client that never acks");
    flood.abort();
    let good = LockClient::connect(client_config(server.endpoint(), 1, 4_000, None))
        .await
        .unwrap();
    drop(
        tokio::time::timeout(SCENARIO_LIMIT, good.take(range(0), Mode::Write))
            .await
            .expect("hung")
            .unwrap(),
    );
    good.farewell().await.unwrap();
    server.shutdown().await;
}
