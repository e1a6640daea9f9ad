//! Both transports, plain and under TLS, against a peer that writes a large answer before it
//! reads anything: only a transport that reads while it writes gets through (RFC 2920 3.1).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use super::tls::{TlsLink, opportunistic_tls};
use super::transport::{Epoll, Transport};
use super::uring::{self, Uring};

/// More than the socket buffers of both sides hold, so neither side can finish writing
/// before the other reads.
const SIZE: usize = 48 * 1024 * 1024;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A peer that writes `SIZE` bytes, then reads `SIZE` bytes and checks them, then closes.
fn stubborn_peer(tls: bool) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut stream: Box<dyn ReadWrite> = if tls {
            let cert = rcgen::generate_simple_self_signed(vec!["peer.test".to_string()]).unwrap();
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            Box::new(rustls::StreamOwned::new(conn, tcp))
        } else {
            Box::new(tcp)
        };
        stream.write_all(&pattern(SIZE)).unwrap();
        stream.flush().unwrap();
        let mut got = vec![0; SIZE];
        stream.read_exact(&mut got).unwrap();
        assert!(got == pattern(SIZE), "the peer received other bytes than were sent");
    });
    (addr, thread)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Writes `SIZE` bytes while collecting what the peer sends, then reads the rest.
async fn exchange<T: Transport>(addr: SocketAddr, tls: bool) -> Vec<u8> {
    let transport = T::connect(addr, None).await.unwrap();
    let mut received = Vec::new();
    let block = Duration::from_secs(20);
    fn collect(into: &mut Vec<u8>) -> impl FnMut(&[u8]) -> std::io::Result<()> + '_ {
        |b| {
            into.extend_from_slice(b);
            Ok(())
        }
    }
    if tls {
        let name = rustls::pki_types::ServerName::try_from("peer.test").unwrap();
        let mut link = TlsLink::connect(transport, opportunistic_tls(), name, block).await.unwrap();
        link.write_all(&pattern(SIZE), block, &mut collect(&mut received)).await.unwrap();
        while received.len() < SIZE {
            assert!(link.read(&mut collect(&mut received)).await.unwrap() > 0, "closed early");
        }
    } else {
        let mut t = transport;
        t.write_all(&pattern(SIZE), block, &mut collect(&mut received)).await.unwrap();
        while received.len() < SIZE {
            assert!(t.read(&mut collect(&mut received)).await.unwrap() > 0, "closed early");
        }
    }
    received
}

fn check(received: Vec<u8>, peer: std::thread::JoinHandle<()>) {
    assert_eq!(received.len(), SIZE);
    assert!(received == pattern(SIZE), "bytes were lost or reordered");
    peer.join().unwrap();
}

fn on_epoll(tls: bool) {
    let (addr, peer) = stubborn_peer(tls);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    check(rt.block_on(exchange::<Epoll>(addr, tls)), peer);
}

fn on_uring(tls: bool) {
    if let Err(e) = uring::probe() {
        // Only a run that asked for epoll alone may go without io_uring.
        assert_eq!(std::env::var("SLUICE_TEST_IO").as_deref(), Ok("epoll"), "io_uring is unavailable: {e}");
        return;
    }
    let (addr, peer) = stubborn_peer(tls);
    check(tokio_uring::start(exchange::<Uring>(addr, tls)), peer);
}

#[test]
fn epoll_reads_while_it_writes() {
    on_epoll(false);
}

#[test]
fn epoll_tls_reads_while_it_writes() {
    on_epoll(true);
}

#[test]
fn uring_reads_while_it_writes() {
    on_uring(false);
}

#[test]
fn uring_tls_reads_while_it_writes() {
    on_uring(true);
}

/// `delivery.source_address`: the connection comes from the configured address. On io_uring
/// this takes the other path (socket bound and connected by tokio, then handed over).
async fn peer_seen_from<T: Transport>(source: std::net::IpAddr) -> std::net::IpAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = std::thread::spawn(move || listener.accept().unwrap().1.ip());
    let mut t = T::connect(addr, Some(source)).await.unwrap();
    // The socket is usable after the hand-over.
    t.write_all(b"x", Duration::from_secs(5), &mut |_| Ok(())).await.unwrap();
    accept.join().unwrap()
}

#[test]
fn both_transports_connect_from_the_source_address() {
    let source: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(rt.block_on(peer_seen_from::<Epoll>(source)), source);
    if uring::probe().is_ok() {
        assert_eq!(tokio_uring::start(peer_seen_from::<Uring>(source)), source);
    } else {
        assert_eq!(std::env::var("SLUICE_TEST_IO").as_deref(), Ok("epoll"), "io_uring is unavailable");
    }
}
