//! Where a daemon listens and a client connects: TCP or a unix socket.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The default TCP port when `--listen` names none.
pub const DEFAULT_PORT: u16 = 7370;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Endpoint {
    /// `unix:/path`, `host:port`, `:port` or `port` (host 127.0.0.1), or an
    /// address without a port (port 7370).
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Endpoint::Tcp(addr));
        }
        let port_text = text.strip_prefix(':').unwrap_or(text);
        if let Ok(port) = port_text.parse::<u16>() {
            return Ok(Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        if let Ok(ip) = text.parse::<std::net::IpAddr>() {
            return Ok(Endpoint::Tcp(SocketAddr::new(ip, DEFAULT_PORT)));
        }
        Err(format!("not a TCP address or unix:/path: {text:?}"))
    }

    pub async fn connect(&self) -> std::io::Result<Stream> {
        match self {
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Endpoint::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        }
    }

    pub async fn bind(&self) -> std::io::Result<Listener> {
        match self {
            Endpoint::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
            Endpoint::Unix(path) => Ok(Listener::Unix(UnixListener::bind(path)?, path.clone())),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// The endpoint clients connect to (the bound port when it was 0).
    pub fn endpoint(&self) -> std::io::Result<Endpoint> {
        match self {
            Listener::Tcp(listener) => Ok(Endpoint::Tcp(listener.local_addr()?)),
            Listener::Unix(_, path) => Ok(Endpoint::Unix(path.clone())),
        }
    }

    pub async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Listener::Unix(listener, _) => Ok(Stream::Unix(listener.accept().await?.0)),
        }
    }

    /// Removes a unix socket's file; called at shutdown.
    pub fn cleanup(&self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}
