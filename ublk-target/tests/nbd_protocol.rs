//! Proves the NBD front end speaks the fixed newstyle protocol byte for byte
//! (options, structured replies, every command, out-of-order replies) and
//! that malformed or hostile clients lose only their own connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;
use ublk_target::nbd::wire::*;
use ublk_target::nbd::{serve, Address, Export, Listener};
use ublk_target::target::{check_range, TargetResult};
use ublk_target::{BlockTarget, MemTarget};

const SIZE_BYTES: u64 = 128 << 20;

/// MemTarget, except that a read at offset `GATED_OFFSET` waits until a
/// write lands at `RELEASE_OFFSET`: lets a test hold one request in flight
/// while a later one completes, without timing. Writes at `HELD_FROM` and
/// beyond are answered at once through `write_answering` but not done
/// (nor, through `write`, answered) until a read at `UNHOLD_OFFSET`.
struct GatedTarget {
    inner: MemTarget,
    gate: tokio::sync::Notify,
    unheld: std::cell::Cell<bool>,
    unhold: tokio::sync::Notify,
}
const GATED_OFFSET: u64 = 0;
const RELEASE_OFFSET: u64 = 65536;
const HELD_FROM: u64 = 16 << 20;
const UNHOLD_OFFSET: u64 = 4096;

impl GatedTarget {
    async fn hold(&self, offset: u64) {
        while offset >= HELD_FROM && !self.unheld.get() {
            self.unhold.notified().await;
        }
    }
}

impl BlockTarget for GatedTarget {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> TargetResult<()> {
        if offset == GATED_OFFSET {
            self.gate.notified().await;
        }
        if offset == UNHOLD_OFFSET {
            self.unheld.set(true);
            self.unhold.notify_waiters();
        }
        self.inner.read(offset, buf).await
    }
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> TargetResult<()> {
        check_range(self.size_bytes(), offset, data.len() as u64)?;
        if offset == RELEASE_OFFSET {
            self.gate.notify_one();
        }
        self.hold(offset).await;
        self.inner.write(offset, data, fua).await
    }
    async fn write_answering(
        &self,
        offset: u64,
        data: &[u8],
        answer: futures::channel::oneshot::Sender<TargetResult<()>>,
    ) {
        if offset < HELD_FROM {
            let _ = answer.send(self.write(offset, data, false).await);
            return;
        }
        let _ = answer.send(Ok(()));
        self.hold(offset).await;
        self.inner.write(offset, data, false).await.unwrap();
    }
    async fn flush(&self) -> TargetResult<()> {
        self.inner.flush().await
    }
    async fn discard(&self, offset: u64, len: u64) -> TargetResult<()> {
        self.inner.discard(offset, len).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> TargetResult<()> {
        self.inner.write_zeroes(offset, len, may_unmap).await
    }
}

/// A real server on a unix socket in a temporary directory, stopped on drop.
struct Server {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let listener = Listener::bind(&Address::Unix(path)).await.unwrap();
                ready_tx.send(()).unwrap();
                let target = Rc::new(GatedTarget {
                    inner: MemTarget::new(SIZE_BYTES),
                    gate: Default::default(),
                    unheld: Default::default(),
                    unhold: Default::default(),
                });
                let export = Export {
                    name: "scoutfs".into(),
                    size_bytes: SIZE_BYTES,
                    block_min_bytes: 512,
                    block_preferred_bytes: 4096,
                };
                serve(listener, target, export, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        ready_rx.recv().unwrap();
        Server {
            _dir: dir,
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn connect(&self) -> Client {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { s }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

struct Client {
    s: UnixStream,
}

impl Client {
    fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }
    fn u16(&mut self) -> u16 {
        be_u16(&self.read_n(2))
    }
    fn u32(&mut self) -> u32 {
        be_u32(&self.read_n(4))
    }
    fn u64(&mut self) -> u64 {
        be_u64(&self.read_n(8))
    }
    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }
    /// True when the server has closed the connection (EOF, or reset).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }

    fn greeting(&mut self, client_flags: u32) {
        assert_eq!(self.u64(), NBD_MAGIC);
        assert_eq!(self.u64(), IHAVEOPT);
        assert_eq!(self.u16(), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        self.send(&client_flags.to_be_bytes());
    }
    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
    }
    /// Reads one option reply: (reply type, data).
    fn option_reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        assert_eq!(self.u64(), OPT_REPLY_MAGIC);
        assert_eq!(self.u32(), option);
        let kind = self.u32();
        let len = self.u32() as usize;
        (kind, self.read_n(len))
    }
    fn go(&mut self, name: &str) -> (u64, u16) {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.option(OPT_GO, &data);
        let mut export = None;
        let mut block = None;
        loop {
            let (kind, data) = self.option_reply(OPT_GO);
            match kind {
                REP_INFO if be_u16(&data) == INFO_EXPORT => {
                    export = Some((be_u64(&data[2..]), be_u16(&data[10..])))
                }
                REP_INFO if be_u16(&data) == INFO_BLOCK_SIZE => {
                    block = Some((be_u32(&data[2..]), be_u32(&data[6..]), be_u32(&data[10..])))
                }
                REP_INFO => {}
                REP_ACK => break,
                other => panic!("unexpected reply {other:#x} to OPT_GO"),
            }
        }
        assert_eq!(block, Some((512, 4096, PAYLOAD_BYTES_MAX)));
        export.expect("OPT_GO sends NBD_INFO_EXPORT")
    }
    /// Handshake with structured replies, ready for transmission.
    fn ready(server: &Server) -> Client {
        let mut c = server.connect();
        c.greeting(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
        c.option(OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(c.option_reply(OPT_STRUCTURED_REPLY).0, REP_ACK);
        c.go("scoutfs");
        c
    }
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut b = Request {
            flags,
            kind,
            cookie,
            offset,
            length,
        }
        .encode()
        .to_vec();
        b.extend_from_slice(payload);
        self.send(&b);
    }
    /// Reads one reply of a structured connection: (cookie, errno, read data).
    fn reply(&mut self) -> (u64, u32, Vec<u8>) {
        match self.u32() {
            SIMPLE_REPLY_MAGIC => {
                let error = self.u32();
                (self.u64(), error, Vec::new())
            }
            STRUCTURED_REPLY_MAGIC => {
                let flags = self.u16();
                assert_eq!(flags & REPLY_FLAG_DONE, REPLY_FLAG_DONE);
                let kind = self.u16();
                let cookie = self.u64();
                let len = self.u32() as usize;
                let payload = self.read_n(len);
                match kind {
                    REPLY_TYPE_OFFSET_DATA => (cookie, 0, payload[8..].to_vec()),
                    REPLY_TYPE_ERROR => {
                        let msg_len = be_u16(&payload[4..]) as usize;
                        assert_eq!(payload.len(), 6 + msg_len);
                        (cookie, be_u32(&payload), Vec::new())
                    }
                    0 => (cookie, 0, Vec::new()),
                    other => panic!("unexpected chunk type {other}"),
                }
            }
            magic => panic!("bad reply magic {magic:#x}"),
        }
    }
}

#[test]
fn options_list_info_unknown_and_go() {
    let server = Server::start();
    let mut c = server.connect();
    c.greeting(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    c.option(OPT_LIST, &[]);
    let (kind, data) = c.option_reply(OPT_LIST);
    assert_eq!(kind, REP_SERVER);
    assert_eq!(&data[4..], b"scoutfs");
    assert_eq!(c.option_reply(OPT_LIST).0, REP_ACK);
    c.option(OPT_LIST, b"junk");
    assert_eq!(c.option_reply(OPT_LIST).0, REP_ERR_INVALID);
    c.option(99, b"whatever");
    assert_eq!(c.option_reply(99).0, REP_ERR_UNSUP);
    // OPT_INFO on a name that does not exist, then a malformed one.
    let mut info = 4u32.to_be_bytes().to_vec();
    info.extend_from_slice(b"nope");
    info.extend_from_slice(&0u16.to_be_bytes());
    c.option(OPT_INFO, &info);
    assert_eq!(c.option_reply(OPT_INFO).0, REP_ERR_UNKNOWN);
    c.option(OPT_INFO, &info[..5]);
    assert_eq!(c.option_reply(OPT_INFO).0, REP_ERR_INVALID);
    let (size, flags) = c.go("scoutfs");
    assert_eq!(size, SIZE_BYTES);
    for f in [
        TX_HAS_FLAGS,
        TX_SEND_FLUSH,
        TX_SEND_FUA,
        TX_SEND_TRIM,
        TX_SEND_WRITE_ZEROES,
        TX_SEND_FAST_ZERO,
    ] {
        assert_eq!(flags & f, f);
    }
    // Simple replies, since structured replies were not negotiated.
    c.request(CMD_WRITE, 0, 7, 4096, 512, &[0xabu8; 512]);
    assert_eq!(c.u32(), SIMPLE_REPLY_MAGIC);
    assert_eq!(c.u32(), 0);
    assert_eq!(c.u64(), 7);
    c.request(CMD_READ, 0, 8, 4096, 512, &[]);
    assert_eq!(c.u32(), SIMPLE_REPLY_MAGIC);
    assert_eq!(c.u32(), 0);
    assert_eq!(c.u64(), 8);
    assert_eq!(c.read_n(512), vec![0xab; 512]);
    c.request(CMD_DISC, 0, 9, 0, 0, &[]);
    assert!(c.closed());
}

#[test]
fn export_name_and_abort() {
    let server = Server::start();
    let mut c = server.connect();
    c.greeting(CLIENT_FLAG_FIXED_NEWSTYLE); // wants the 124 zero bytes
    c.option(OPT_EXPORT_NAME, b"scoutfs");
    assert_eq!(c.u64(), SIZE_BYTES);
    let _flags = c.u16();
    assert_eq!(c.read_n(124), vec![0u8; 124]);
    c.request(CMD_FLUSH, 0, 1, 0, 0, &[]);
    assert_eq!(c.u32(), SIMPLE_REPLY_MAGIC);
    assert_eq!(c.u32(), 0);

    let mut wrong = server.connect();
    wrong.greeting(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    wrong.option(OPT_EXPORT_NAME, b"other");
    assert!(wrong.closed());

    let mut abort = server.connect();
    abort.greeting(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    abort.option(OPT_ABORT, &[]);
    assert_eq!(abort.option_reply(OPT_ABORT).0, REP_ACK);
    assert!(abort.closed());
}

#[test]
fn every_command_with_structured_replies() {
    let server = Server::start();
    let mut c = Client::ready(&server);
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    c.request(CMD_WRITE, CMD_FLAG_FUA, 1, 1536, 8192, &pattern);
    assert_eq!(c.reply(), (1, 0, vec![]));
    c.request(CMD_READ, 0, 2, 1536, 8192, &[]);
    assert_eq!(c.reply(), (2, 0, pattern.clone()));
    c.request(CMD_TRIM, 0, 3, 1536, 4096, &[]);
    assert_eq!(c.reply(), (3, 0, vec![]));
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 4, 5632, 1024, &[]);
    assert_eq!(c.reply(), (4, 0, vec![]));
    c.request(CMD_READ, 0, 5, 1536, 8192, &[]);
    let mut expect = pattern.clone();
    expect[..4096].fill(0);
    expect[4096..5120].fill(0);
    assert_eq!(c.reply(), (5, 0, expect));
    c.request(CMD_FLUSH, 0, 6, 0, 0, &[]);
    assert_eq!(c.reply(), (6, 0, vec![]));
    c.request(CMD_READ, 0, 7, 512, 0, &[]);
    assert_eq!(c.reply(), (7, 0, vec![]));
}

/// WRITE_ZEROES with FAST_ZERO zeroes (by unmapping, in the volume); with
/// NO_HOLE as well it would have to write, so it fails at once with
/// ENOTSUP and changes nothing.
#[test]
fn fast_zero_zeroes_or_fails_at_once() {
    let server = Server::start();
    let mut c = Client::ready(&server);
    c.request(CMD_WRITE, 0, 1, 8192, 8192, &[0x5au8; 8192]);
    assert_eq!(c.reply(), (1, 0, vec![]));
    c.request(
        CMD_WRITE_ZEROES,
        CMD_FLAG_FAST_ZERO | CMD_FLAG_NO_HOLE,
        2,
        8192,
        4096,
        &[],
    );
    assert_eq!(c.reply().1, NBD_ENOTSUP);
    c.request(CMD_READ, 0, 3, 8192, 8192, &[]);
    assert_eq!(
        c.reply(),
        (3, 0, vec![0x5a; 8192]),
        "ENOTSUP changed nothing"
    );
    c.request(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 4, 8192, 4096, &[]);
    assert_eq!(c.reply(), (4, 0, vec![]));
    let mut expect = vec![0u8; 4096];
    expect.extend_from_slice(&[0x5a; 4096]);
    c.request(CMD_READ, 0, 5, 8192, 8192, &[]);
    assert_eq!(c.reply(), (5, 0, expect));
}

#[test]
fn bad_requests_get_errors_and_the_connection_stays() {
    let server = Server::start();
    let mut c = Client::ready(&server);
    c.request(CMD_READ, 0, 1, SIZE_BYTES, 512, &[]);
    assert_eq!(c.reply(), (1, NBD_EINVAL, vec![]));
    c.request(CMD_READ, 0, 2, u64::MAX - 511, 1024, &[]);
    assert_eq!(c.reply(), (2, NBD_EINVAL, vec![]));
    c.request(CMD_WRITE, 0, 3, 100, 512, &[1u8; 512]);
    assert_eq!(c.reply(), (3, NBD_EINVAL, vec![]));
    c.request(CMD_TRIM, 0, 4, SIZE_BYTES - 512, 1024, &[]);
    assert_eq!(c.reply(), (4, NBD_EINVAL, vec![]));
    c.request(CMD_READ, 0, 5, 0, PAYLOAD_BYTES_MAX + 4096, &[]);
    assert_eq!(c.reply(), (5, NBD_EINVAL, vec![]));
    c.request(42, 0, 6, 0, 0, &[]);
    assert_eq!(c.reply(), (6, NBD_EINVAL, vec![]));
    c.request(CMD_WRITE, 0, 7, 512, 512, &[9u8; 512]);
    assert_eq!(c.reply(), (7, 0, vec![]));
}

#[test]
fn pipelined_requests_are_answered_out_of_order() {
    let server = Server::start();
    let mut c = Client::ready(&server);
    // The read waits inside the target until the later write arrives, so
    // the write's reply must overtake it.
    c.request(CMD_READ, 0, 100, GATED_OFFSET, 4096, &[]);
    c.request(CMD_WRITE, 0, 200, RELEASE_OFFSET, 4096, &[5u8; 4096]);
    assert_eq!(c.reply().0, 200);
    assert_eq!(c.reply(), (100, 0, vec![0u8; 4096]));
    // Many requests at once: every cookie answered exactly once.
    let mut batch = Vec::new();
    for i in 0..200u64 {
        let r = Request {
            flags: 0,
            kind: CMD_WRITE,
            cookie: 1000 + i,
            offset: i * 512,
            length: 512,
        };
        batch.extend_from_slice(&r.encode());
        batch.extend_from_slice(&[i as u8; 512]);
    }
    c.send(&batch);
    let mut seen: Vec<u64> = (0..200)
        .map(|_| c.reply())
        .map(|(cookie, e, _)| {
            assert_eq!(e, 0);
            cookie
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (1000..1200).collect::<Vec<_>>());
    c.request(CMD_READ, 0, 5, 199 * 512, 512, &[]);
    assert_eq!(c.reply(), (5, 0, vec![199u8; 512]));
}

/// A healthy client, connected first, keeps working after each hostile one.
fn healthy_survives(_server: &Server, healthy: &mut Client, cookie: u64) {
    healthy.request(CMD_READ, 0, cookie, 512, 512, &[]);
    let (c, e, _) = healthy.reply();
    assert_eq!((c, e), (cookie, 0));
}

#[test]
fn hostile_clients_lose_only_their_own_connection() {
    let server = Server::start();
    let mut healthy = Client::ready(&server);

    // Truncated greeting reply: two bytes of flags, then gone.
    let mut c = server.connect();
    let _ = c.read_n(18);
    c.send(&[0, 0]);
    drop(c);
    healthy_survives(&server, &mut healthy, 1);

    // An old-style client without the fixed newstyle flag.
    let mut c = server.connect();
    c.greeting(0);
    assert!(c.closed());
    // Unknown client flags.
    let mut c = server.connect();
    c.greeting(CLIENT_FLAG_FIXED_NEWSTYLE | 0x100);
    assert!(c.closed());
    // Bad option magic.
    let mut c = server.connect();
    c.greeting(CLIENT_FLAG_FIXED_NEWSTYLE);
    c.send(&[0x55; 16]);
    assert!(c.closed());
    // An option claiming a huge payload.
    let mut c = server.connect();
    c.greeting(CLIENT_FLAG_FIXED_NEWSTYLE);
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    c.send(&b);
    assert!(c.closed());
    // Truncated option: header promises 100 bytes, 3 arrive, then EOF.
    let mut c = server.connect();
    c.greeting(CLIENT_FLAG_FIXED_NEWSTYLE);
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&100u32.to_be_bytes());
    b.extend_from_slice(b"abc");
    c.send(&b);
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());
    // Endless options.
    let mut c = server.connect();
    c.greeting(CLIENT_FLAG_FIXED_NEWSTYLE);
    for _ in 0..=ublk_target::nbd::OPTIONS_MAX {
        c.option(999, &[]);
    }
    for _ in 0..ublk_target::nbd::OPTIONS_MAX {
        assert_eq!(c.option_reply(999).0, REP_ERR_UNSUP);
    }
    assert!(c.closed());
    healthy_survives(&server, &mut healthy, 2);

    // In transmission: bad request magic.
    let mut c = Client::ready(&server);
    c.send(&[0x77; 28]);
    assert!(c.closed());
    // An oversized write: an error naming the limit, then the connection closes.
    let mut c = Client::ready(&server);
    c.request(CMD_WRITE, 0, 9, 0, PAYLOAD_BYTES_MAX + 512, &[]);
    assert_eq!(c.reply(), (9, NBD_EINVAL, vec![]));
    assert!(c.closed());
    // A write whose payload never fully arrives.
    let mut c = Client::ready(&server);
    c.request(CMD_WRITE, 0, 10, 0, 4096, &[1u8; 100]);
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());
    // A header cut in half.
    let mut c = Client::ready(&server);
    c.send(
        &Request {
            flags: 0,
            kind: CMD_READ,
            cookie: 1,
            offset: 0,
            length: 512,
        }
        .encode()[..13],
    );
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());
    healthy_survives(&server, &mut healthy, 3);
}

#[test]
fn unix_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let mode = std::fs::metadata(Path::new(&server.socket))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Writes are answered before they are done only up to
/// `ANSWERED_BYTES_MAX` of payload per connection: past it, a write waits
/// to be done before its answer.
#[test]
fn writes_answered_before_they_are_done_are_bounded_in_bytes() {
    use ublk_target::nbd::ANSWERED_BYTES_MAX;
    let server = Server::start();
    let mut c = Client::ready(&server);
    const MIB: usize = 1 << 20;
    let early = ANSWERED_BYTES_MAX / MIB;
    let writes = early + 4;
    assert!(HELD_FROM as usize + writes * MIB <= SIZE_BYTES as usize);
    for i in 0..writes {
        let offset = HELD_FROM + (i * MIB) as u64;
        c.request(
            CMD_WRITE,
            0,
            100 + i as u64,
            offset,
            MIB as u32,
            &vec![i as u8; MIB],
        );
    }
    // Unholds the writes; its answer follows every answer given before.
    c.request(CMD_READ, 0, 1, UNHOLD_OFFSET, 512, &[]);
    let before_unhold: Vec<u64> = std::iter::from_fn(|| Some(c.reply().0))
        .take_while(|&cookie| cookie != 1)
        .collect();
    assert_eq!(before_unhold, (100..100 + early as u64).collect::<Vec<_>>());
    let mut after: Vec<u64> = (0..writes - early).map(|_| c.reply().0).collect();
    after.sort();
    assert_eq!(
        after,
        (100 + early as u64..100 + writes as u64).collect::<Vec<_>>()
    );
    // Every write landed.
    c.request(
        CMD_READ,
        0,
        2,
        HELD_FROM + (writes as u64 - 1) * MIB as u64,
        512,
        &[],
    );
    assert_eq!(c.reply(), (2, 0, vec![(writes - 1) as u8; 512]));
}

/// A connection's requests hold at most `PAYLOAD_BYTES_IN_FLIGHT_MAX`
/// bytes of payload: with every write held (a FUA write is answered when
/// done), the server stops reading the socket once that much is in, and
/// reads the rest once they are let go (from another connection).
#[test]
fn payload_bytes_in_flight_are_bounded() {
    use ublk_target::nbd::PAYLOAD_BYTES_IN_FLIGHT_MAX;
    const MIB: usize = 1 << 20;
    let server = Server::start();
    let mut c = Client::ready(&server);
    let room = PAYLOAD_BYTES_IN_FLIGHT_MAX / MIB;
    let writes = room + 16;
    assert!(HELD_FROM as usize + writes * MIB <= SIZE_BYTES as usize);
    let mut stream = Vec::new();
    for i in 0..writes {
        let request = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            cookie: 100 + i as u64,
            offset: HELD_FROM + (i * MIB) as u64,
            length: MIB as u32,
        };
        stream.extend_from_slice(&request.encode());
        stream.extend(std::iter::repeat_n(i as u8, MIB));
    }
    // Sends until the server has read nothing for a second and a half.
    c.s.set_write_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut sent = 0;
    while sent < stream.len() {
        match c.s.write(&stream[sent..]) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("sending: {e}"),
        }
    }
    // Let go of the held writes (first: a server stopping with writes
    // held would wait for them); the server reads on, and answers all.
    let mut other = Client::ready(&server);
    other.request(CMD_READ, 0, 1, UNHOLD_OFFSET, 512, &[]);
    assert_eq!(other.reply().1, 0);
    let request_bytes = REQUEST_HEADER_BYTES + MIB;
    // The server took every payload that fits (the socket's buffer and
    // the server's read-ahead hold a little more, well under a request).
    assert!(
        sent >= room * request_bytes,
        "the server stopped reading after {} of {room} payloads that fit",
        sent / request_bytes
    );
    assert!(
        sent < (room + 2) * request_bytes,
        "the server read {} requests of 1 MiB while {room} MiB of payload was in flight",
        sent / request_bytes
    );
    c.s.set_write_timeout(None).unwrap();
    c.send(&stream[sent..]);
    let mut answered: Vec<(u64, u32)> = (0..writes)
        .map(|_| {
            let (cookie, errno, _) = c.reply();
            (cookie, errno)
        })
        .collect();
    answered.sort();
    assert_eq!(
        answered,
        (0..writes).map(|i| (100 + i as u64, 0)).collect::<Vec<_>>()
    );
    let last = HELD_FROM + ((writes - 1) * MIB) as u64;
    c.request(CMD_READ, 0, 2, last, 512, &[]);
    assert_eq!(c.reply(), (2, 0, vec![(writes - 1) as u8; 512]));
}
