//! The `lockd` program: it serves on the address given, `lockd stat` prints a
//! running daemon's counts (and fails clearly for a wrong cluster id), and
//! SIGTERM shuts it down cleanly (exit status 0, unix socket file removed),
//! and a client failing in a loop cannot grow its log without bound.

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const LOCKD: &str = env!("CARGO_BIN_EXE_lockd");

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(listen: &str) -> Daemon {
    let child = Command::new(LOCKD)
        .args([
            "--listen",
            listen,
            "--cluster-id",
            "0x77",
            "--recovery-ms",
            "0",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("lockd starts");
    Daemon(child)
}

/// The address the daemon logs once it listens (with port 0, the port it
/// got: no port picked by the test that something else may take first).
/// Its log goes on being drained so the daemon never blocks on it.
fn listening_on(daemon: &mut Daemon) -> String {
    listening_on_with_log(daemon).0
}

/// `listening_on`, and the rest of the daemon's log once it exits.
fn listening_on_with_log(daemon: &mut Daemon) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::BufRead;
    let stderr = daemon.0.stderr.take().expect("stderr is piped");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("reading lockd's log");
        if let Some(rest) = line.split("lockd listening on ").nth(1) {
            let endpoint = rest.split(',').next().unwrap().to_string();
            let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect());
            return (endpoint, rest);
        }
        seen.push(line);
    }
    panic!(
        "lockd exited before listening ({:?}); its log:\n{}",
        daemon.0.wait(),
        seen.join("\n")
    );
}

fn stat(connect: &str, cluster_id: &str) -> Output {
    Command::new(LOCKD)
        .args(["stat", "--connect", connect, "--cluster-id", cluster_id])
        .output()
        .expect("lockd stat runs")
}

/// Runs `lockd stat` until the daemon answers (it may still be binding).
fn stat_when_up(connect: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = stat(connect, "0x77");
        if output.status.success() || Instant::now() > deadline {
            return output;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(mut daemon: Daemon) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    daemon.0.wait().expect("lockd exits")
}

#[test]
fn stat_over_tcp_and_a_clean_sigterm() {
    let mut daemon = start("127.0.0.1:0");
    let addr = listening_on(&mut daemon);
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let output = stat_when_up(&addr);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("locks") && text.contains("p99"), "{text}");
    let refused = stat(&addr, "0x78");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cluster"),
        "{refused:?}"
    );
    assert!(terminate(daemon).success());
}

#[test]
fn a_unix_socket_daemon_removes_its_socket_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockd.sock");
    let listen = format!("unix:{}", path.display());
    let mut daemon = start(&listen);
    assert_eq!(listening_on(&mut daemon), listen);
    assert!(stat_when_up(&listen).status.success());
    assert!(path.exists());
    assert!(terminate(daemon).success());
    assert!(!path.exists(), "socket file left behind");
}

#[test]
fn a_flood_of_bad_connections_is_logged_at_a_bounded_rate() {
    // Lines of a kind per window: log-ratelimit's defaults, which lockd uses.
    const BURST: usize = log_ratelimit::BURST as usize;
    let window_secs = log_ratelimit::WINDOW.as_secs();
    const FLOOD: usize = 1000;
    let mut daemon = start("127.0.0.1:0");
    let (addr, log) = listening_on_with_log(&mut daemon);
    let started = Instant::now();
    for _ in 0..FLOOD {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // Not a greeting: the daemon closes the connection.
        stream.write_all(&[0xff; 64]).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("lockd did not close a bad connection: {e}"),
            }
        }
    }
    // Every bad connection was closed; the daemon serves on.
    assert!(stat_when_up(&addr).status.success());
    let windows = (started.elapsed().as_secs() / window_secs + 1) as usize;
    assert!(terminate(daemon).success());
    let log = log.join().unwrap();
    let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
    let closed = count("closed: ");
    let closing = count("closing connection ");
    assert!(
        closed + closing > 0,
        "no line for {FLOOD} bad connections; the log:\n{}",
        log.join("\n")
    );
    assert!(
        closed <= BURST * windows && closing <= BURST * windows,
        "{closed} lines of closed connections and {closing} of connections closed \
         for cause, for {FLOOD} bad connections in {windows} windows"
    );
}
