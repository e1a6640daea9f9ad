//! The byte transport under an outbound connection, so the SMTP client code is one whatever
//! the I/O backend: plain tokio (epoll) here, io_uring in `uring.rs`.
//!
//! Both operations hand the peer's bytes to a sink as they arrive. `write_all` keeps reading
//! while it writes, so a server that answers part of a pipelined batch before it has read the
//! rest can never deadlock against us (RFC 2920 3.1). Reads are cancel-safe: a read dropped
//! by a timeout loses no bytes (io_uring completes reads the caller may no longer wait for,
//! so that backend keeps the read in flight on the transport itself).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Where received bytes go; an error ends the operation (a TLS record that does not decrypt).
pub type Sink<'a> = &'a mut dyn FnMut(&[u8]) -> io::Result<()>;

/// Receive buffer per connection.
pub const READ_BUFFER: usize = 16 * 1024;

pub trait Transport: Sized + 'static {
    /// Opens a TCP connection, from `source` if given, with TCP_NODELAY set (without it each
    /// pipelined write waits for the peer's delayed ACK).
    fn connect(addr: SocketAddr, source: Option<IpAddr>) -> impl Future<Output = io::Result<Self>>;

    /// Waits for bytes and hands them to `sink`; `Ok(0)` when the peer closed.
    fn read(&mut self, sink: Sink<'_>) -> impl Future<Output = io::Result<usize>>;

    /// Writes all of `data`, each write within `block`, handing what arrives meanwhile to `sink`.
    fn write_all(&mut self, data: &[u8], block: Duration, sink: Sink<'_>) -> impl Future<Output = io::Result<()>>;

    /// Half-closes the sending side (after QUIT).
    fn shutdown(&mut self);

    /// Whether an idle connection is still quiet, without waiting: a peer that closed or
    /// sent something nobody asked for makes it unusable.
    fn idle_state(&mut self) -> IdleState;
}

/// What a look at an idle connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleState {
    Quiet,
    /// The peer sent bytes while nothing was asked (a stale reply, a 421 before closing).
    Unread,
    /// The peer closed the connection, or it failed.
    Closed,
}

/// Peeks at a socket without taking anything from it and without blocking.
pub fn peek(fd: std::os::fd::RawFd) -> IdleState {
    let mut byte = 0u8;
    // SAFETY: `fd` is an open socket owned by the caller; the buffer is one valid byte.
    let n = unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        0 => IdleState::Closed,
        n if n > 0 => IdleState::Unread,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => IdleState::Quiet,
            _ => IdleState::Closed,
        },
    }
}

pub fn closed_by_peer() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the server")
}

pub fn stalled(block: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("write stalled for {block:?}"))
}

/// The socket for `addr`, bound to `source` when given.
pub fn tokio_socket(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| io::Error::new(e.kind(), format!("bind {source}: {e}")))?;
    }
    Ok(socket)
}

/// Plain tokio: readiness from epoll, then non-blocking reads and writes.
pub struct Epoll {
    tcp: tokio::net::TcpStream,
    buf: Box<[u8]>,
}

impl Epoll {
    fn try_read(&mut self, sink: Sink<'_>) -> io::Result<Option<usize>> {
        match self.tcp.try_read(&mut self.buf) {
            Ok(n) => {
                if n > 0 {
                    sink(&self.buf[..n])?;
                }
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Transport for Epoll {
    async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<Epoll> {
        let tcp = tokio_socket(addr, source)?.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Epoll { tcp, buf: vec![0; READ_BUFFER].into_boxed_slice() })
    }

    async fn read(&mut self, sink: Sink<'_>) -> io::Result<usize> {
        loop {
            self.tcp.readable().await?;
            if let Some(n) = self.try_read(sink)? {
                return Ok(n);
            }
        }
    }

    async fn write_all(&mut self, data: &[u8], block: Duration, sink: Sink<'_>) -> io::Result<()> {
        let mut written = 0;
        while written < data.len() {
            match self.tcp.try_write(&data[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // The socket buffer is full: wait for room, reading whatever the server says.
            tokio::select! {
                ready = tokio::time::timeout(block, self.tcp.writable()) => ready.map_err(|_| stalled(block))??,
                ready = self.tcp.readable() => {
                    ready?;
                    if self.try_read(sink)? == Some(0) {
                        return Err(closed_by_peer());
                    }
                }
            }
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
    }

    fn idle_state(&mut self) -> IdleState {
        use std::os::fd::AsRawFd;
        peek(self.tcp.as_raw_fd())
    }
}
