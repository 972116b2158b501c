//! Accepts NBD clients on a unix socket or TCP and serves each one on the
//! current thread (tokio current_thread runtime + `LocalSet`): every
//! connection shares one `Rc` target, whose data I/O is asynchronous, so one
//! thread keeps many requests in flight without any `Send` bound.
//!
//! `serve(listener, target, export, shutdown)` is the whole server, so tests
//! bind a temporary socket and run a real server inside the test process.

use super::handshake::{handshake, Export, Negotiated};
use super::transmission::transmission;
use crate::target::BlockTarget;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use log_ratelimit::{log_limited, LogLimit};

/// Lines a client causes per connection, which a reconnecting client
/// repeats at will: connected and disconnected, and apart from them (so
/// that many clients coming and going do not hide a hostile one) refused,
/// failed handshakes and connections closed for an error.
pub(crate) static CONNECTIONS: LogLimit = LogLimit::new("nbd: connection messages");
pub(crate) static CONNECTION_ERRORS: LogLimit = LogLimit::new("nbd: connection errors");

/// Clients served at once; one more is refused with a log line. Each holds
/// at most `IN_FLIGHT_MAX` requests and `PAYLOAD_BYTES_IN_FLIGHT_MAX` bytes
/// of their payloads, so this bounds the server's memory.
pub const CONNECTIONS_MAX: usize = 64;
/// A client that has not chosen an export by then is dropped, so silent
/// connections cannot hold the slots.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Where to listen: `unix:PATH`, `HOST:PORT`, or `PORT` / `:PORT` (on
/// 127.0.0.1: TCP listens on the loopback unless a host is named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let port_only = text.strip_prefix(':').unwrap_or(text);
        if port_only.parse::<u16>().is_ok() {
            return Ok(Address::Tcp(format!("127.0.0.1:{port_only}")));
        }
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(text.into()))
            }
            _ => Err(format!("{text:?} is neither unix:PATH, HOST:PORT nor PORT")),
        }
    }

    /// The NBD URI clients (qemu, libnbd) accept for this address.
    pub fn uri(&self, export: &str) -> String {
        match self {
            Address::Unix(path) => format!("nbd+unix:///{export}?socket={}", path.display()),
            Address::Tcp(hostport) => format!("nbd://{hostport}/{export}"),
        }
    }
}

pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Binds; a unix socket is created with mode 0600 (only its owner may
    /// connect). A stale socket file left by a dead server is replaced.
    pub async fn bind(address: &Address) -> std::io::Result<Listener> {
        match address {
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                // The umask makes the socket 0600 from its creation on. It
                // is the process's: binds on two threads at once could
                // each restore the other's (a test process serves many
                // exports), so they take turns.
                static UMASK_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
                let bound = {
                    let _turn = UMASK_TURN.lock().unwrap_or_else(|p| p.into_inner());
                    // SAFETY: umask only swaps the process's creation mask.
                    let old = unsafe { libc::umask(0o177) };
                    let bound = UnixListener::bind(path);
                    // SAFETY: as above.
                    unsafe { libc::umask(old) };
                    bound
                };
                Ok(Listener::Unix(bound?, path.clone()))
            }
            Address::Tcp(hostport) => {
                Ok(Listener::Tcp(TcpListener::bind(hostport.as_str()).await?))
            }
        }
    }

    /// The address actually bound (a TCP port 0 becomes the real port).
    pub fn address(&self) -> Address {
        match self {
            Listener::Unix(_, path) => Address::Unix(path.clone()),
            Listener::Tcp(l) => {
                Address::Tcp(l.local_addr().map(|a| a.to_string()).unwrap_or_default())
            }
        }
    }
}

fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Serves until `shutdown` completes; then stops accepting, lets every
/// connection finish its in-flight requests, and returns. Must run inside a
/// `tokio::task::LocalSet`.
pub async fn serve<T, F>(
    listener: Listener,
    target: Rc<T>,
    export: Export,
    shutdown: F,
) -> std::io::Result<()>
where
    T: BlockTarget + 'static,
    F: Future<Output = ()>,
{
    let export = Rc::new(export);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // e.g. EMFILE: keep serving the clients we have.
                log_limited!(
                    CONNECTION_ERRORS,
                    log::Level::Warn,
                    "nbd: accept failed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= CONNECTIONS_MAX {
            log_limited!(
                CONNECTION_ERRORS,
                log::Level::Warn,
                "nbd: refusing {peer}: already {CONNECTIONS_MAX} clients"
            );
            continue;
        }
        let (target, export, stop) = (target.clone(), export.clone(), stop_rx.clone());
        connections.spawn_local(async move {
            match stream {
                Stream::Unix(s) => serve_client(s, &peer, target, &export, stop).await,
                Stream::Tcp(s) => {
                    let _ = s.set_nodelay(true);
                    serve_client(s, &peer, target, &export, stop).await
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Stream, String)> {
    match listener {
        Listener::Unix(l, path) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), format!("unix:{}", path.display())))
        }
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            Ok((Stream::Tcp(s), peer.to_string()))
        }
    }
}

/// One client from handshake to close. Errors end this client only; the
/// reason is logged.
async fn serve_client<S, T>(
    mut stream: S,
    peer: &str,
    target: Rc<T>,
    export: &Export,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    T: BlockTarget + 'static,
{
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let session = match tokio::time::timeout(timeout, handshake(&mut stream, export)).await {
        Ok(Ok(Negotiated::Transmission(session))) => session,
        Ok(Ok(Negotiated::Closed)) => {
            log_limited!(
                CONNECTIONS,
                log::Level::Info,
                "nbd: {peer} left during the handshake"
            );
            return;
        }
        Ok(Err(e)) => {
            log_limited!(
                CONNECTION_ERRORS,
                log::Level::Warn,
                "nbd: closing {peer}: handshake: {e}"
            );
            return;
        }
        Err(_) => {
            log_limited!(
                CONNECTION_ERRORS,
                log::Level::Warn,
                "nbd: closing {peer}: no export chosen within {HANDSHAKE_TIMEOUT_MS} ms"
            );
            return;
        }
    };
    log_limited!(
        CONNECTIONS,
        log::Level::Info,
        "nbd: {peer} connected (structured replies: {}, base:allocation: {})",
        session.structured,
        session.base_allocation
    );
    let (reader, writer) = tokio::io::split(stream);
    match transmission(reader, writer, target, session, stop).await {
        Ok(()) => log_limited!(CONNECTIONS, log::Level::Info, "nbd: {peer} disconnected"),
        Err(e) => log_limited!(
            CONNECTION_ERRORS,
            log::Level::Warn,
            "nbd: closing {peer}: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("unix:/tmp/s"),
            Ok(Address::Unix("/tmp/s".into()))
        );
        assert_eq!(
            Address::parse("127.0.0.1:10809"),
            Ok(Address::Tcp("127.0.0.1:10809".into()))
        );
        assert_eq!(
            Address::parse("[::1]:10809"),
            Ok(Address::Tcp("[::1]:10809".into()))
        );
        for port_only in ["10809", ":10809"] {
            assert_eq!(
                Address::parse(port_only),
                Ok(Address::Tcp("127.0.0.1:10809".into())),
                "{port_only}"
            );
        }
        assert!(Address::parse("70000").is_err());
        assert!(Address::parse(":").is_err());
        assert!(Address::parse("unix:").is_err());
        assert!(Address::parse("localhost").is_err());
        assert!(Address::parse("host:99999").is_err());
        assert_eq!(
            Address::Unix("/run/x.sock".into()).uri("scoutfs"),
            "nbd+unix:///scoutfs?socket=/run/x.sock"
        );
    }
}
