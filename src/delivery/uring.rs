//! The io_uring transport (tokio-uring). Its streams take owned buffers and have no
//! AsyncRead/AsyncWrite, so this file is the only place that knows about them.
//!
//! A read submitted to the ring completes in the kernel whether or not anyone still waits for
//! it; dropping its future would throw those bytes away. So the read in flight lives on the
//! transport, and a caller that stops waiting (a timeout, or a write that finished first)
//! finds it again on the next call.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::TcpStream;

use super::transport::{IdleState, READ_BUFFER, Sink, Transport, closed_by_peer, peek, stalled, tokio_socket};

type PendingRead = Pin<Box<dyn Future<Output = (io::Result<usize>, Vec<u8>)>>>;

pub struct Uring {
    tcp: Rc<TcpStream>,
    pending: Option<PendingRead>,
    /// The receive buffer while no read is in flight.
    spare: Option<Vec<u8>>,
    /// The owned copy a write hands to the kernel, kept for the next write.
    out: Option<Vec<u8>>,
}

/// Whether io_uring can be used here: `io_uring_setup` fails under seccomp filters and with
/// `kernel.io_uring_disabled`, and tokio-uring panics rather than report it, so ask first.
/// Runs on a thread of its own because a runtime may not be dropped inside another.
pub fn probe() -> Result<(), String> {
    std::thread::spawn(|| tokio_uring::Runtime::new(&tokio_uring::builder()).map(drop).map_err(|e| e.to_string()))
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
}

enum Woke {
    Wrote(Result<(io::Result<usize>, Vec<u8>), tokio::time::error::Elapsed>),
    Read(io::Result<usize>, Vec<u8>),
}

impl Uring {
    fn start_read(&mut self) -> &mut PendingRead {
        self.pending.get_or_insert_with(|| {
            let tcp = self.tcp.clone();
            let mut buf = self.spare.take().unwrap_or_else(|| Vec::with_capacity(READ_BUFFER));
            buf.clear();
            Box::pin(async move { tcp.read(buf).await })
        })
    }

    /// Hands a finished read to `sink`; the buffer is kept for the next one.
    fn finish_read(&mut self, result: io::Result<usize>, buf: Vec<u8>, sink: Sink<'_>) -> io::Result<usize> {
        self.pending = None;
        let outcome = match result {
            Ok(n) if n > 0 => sink(&buf[..n]).map(|_| n),
            other => other,
        };
        self.spare = Some(buf);
        outcome
    }
}

impl Transport for Uring {
    async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<Uring> {
        let tcp = match source {
            None => TcpStream::connect(addr).await?,
            // tokio-uring cannot bind before connecting: build the socket here (tokio's reactor
            // runs inside the tokio-uring runtime) and hand it over, blocking as the ring expects.
            Some(_) => {
                let std = tokio_socket(addr, source)?.connect(addr).await?.into_std()?;
                std.set_nonblocking(false)?;
                TcpStream::from_std(std)
            }
        };
        tcp.set_nodelay(true)?;
        Ok(Uring { tcp: Rc::new(tcp), pending: None, spare: None, out: None })
    }

    async fn read(&mut self, sink: Sink<'_>) -> io::Result<usize> {
        let (result, buf) = self.start_read().as_mut().await;
        self.finish_read(result, buf, sink)
    }

    async fn write_all(&mut self, data: &[u8], block: Duration, sink: Sink<'_>) -> io::Result<()> {
        let mut out = self.out.take().unwrap_or_default();
        out.clear();
        out.extend_from_slice(data);
        let mut written = 0;
        while written < out.len() {
            let tcp = self.tcp.clone();
            let slice = out.slice(written..);
            let mut write = Box::pin(tokio::time::timeout(block, async move {
                let (result, slice) = tcp.write(slice).submit().await;
                (result, slice.into_inner())
            }));
            // Read while the write is in flight; a read that finishes first is handed on and
            // a new one started, a read still pending when the write finishes stays for later.
            out = loop {
                let woke = {
                    let read = self.start_read();
                    tokio::select! {
                        biased;
                        w = &mut write => Woke::Wrote(w),
                        (r, buf) = read.as_mut() => Woke::Read(r, buf),
                    }
                };
                match woke {
                    Woke::Read(result, buf) => {
                        if self.finish_read(result, buf, sink)? == 0 {
                            return Err(closed_by_peer());
                        }
                    }
                    Woke::Wrote(Err(_)) => return Err(stalled(block)),
                    Woke::Wrote(Ok((result, buf))) => match result? {
                        0 => return Err(io::ErrorKind::WriteZero.into()),
                        n => {
                            written += n;
                            break buf;
                        }
                    },
                }
            };
        }
        self.out = Some(out);
        Ok(())
    }

    fn shutdown(&mut self) {
        let _ = self.tcp.shutdown(std::net::Shutdown::Write);
    }

    /// A read left in flight by a write owns whatever arrives: if it has completed, that is
    /// the answer; while it is pending the socket is quiet as far as the ring has told us
    /// (a completion not yet reaped is caught by the client's strict reply matching).
    fn idle_state(&mut self) -> IdleState {
        use std::os::fd::AsRawFd;
        if let Some(read) = self.pending.as_mut() {
            let waker = std::task::Waker::noop();
            return match read.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
                std::task::Poll::Pending => IdleState::Quiet,
                std::task::Poll::Ready((result, buf)) => {
                    self.pending = None;
                    self.spare = Some(buf);
                    match result {
                        Ok(n) if n > 0 => IdleState::Unread,
                        _ => IdleState::Closed,
                    }
                }
            };
        }
        peek(self.tcp.as_raw_fd())
    }
}

impl Drop for Uring {
    /// The socket outlives its last handle while a read is in flight (the kernel holds it), and
    /// the peer would never see it close: shutting it down ends that read.
    fn drop(&mut self) {
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }
}
