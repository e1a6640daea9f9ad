//! One HTTPS request to a host found through our own resolver (never the system's): HTTP/1.1
//! over tokio-rustls with the certificate verified for the host's name. Used for MTA-STS
//! policy fetches and TLS-RPT reports. The caller bounds the whole exchange with its timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::config::IpFamily;
use crate::dns::{AddrAnswer, Resolve};

/// A connection is given this long to finish after its response started (a server that
/// keeps it open is cut off).
const LINGER: Duration = Duration::from_secs(60);
/// Connecting, shared among the host's addresses.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpsError {
    Resolve(String),
    Connect(String),
    /// The handshake failed; a certificate not valid for the name among them.
    Tls(String),
    Http(String),
}

impl std::fmt::Display for HttpsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpsError::Resolve(why) => write!(f, "host not found: {why}"),
            HttpsError::Connect(why) => write!(f, "connecting: {why}"),
            HttpsError::Tls(why) => write!(f, "TLS: {why}"),
            HttpsError::Http(why) => write!(f, "HTTP: {why}"),
        }
    }
}

/// Sends `request` (its URI a path; Host is set here) to `host`:`port`, each address in turn
/// until one takes the connection, and returns the response with its body still to read.
pub async fn send(
    host: &str,
    port: u16,
    mut request: hyper::Request<Full<Bytes>>,
    dns: &impl Resolve,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<hyper::Response<Incoming>, HttpsError> {
    let addrs = match dns.addrs(host, IpFamily::Any).await {
        AddrAnswer::Addrs(addrs) => addrs,
        AddrAnswer::None => return Err(HttpsError::Resolve(format!("{host} has no address"))),
        AddrAnswer::Temporary(why) => return Err(HttpsError::Resolve(why)),
    };
    let name = ServerName::try_from(host.to_string()).map_err(|e| HttpsError::Resolve(e.to_string()))?;
    let authority = if port == 443 { host.to_string() } else { format!("{host}:{port}") };
    let headers = request.headers_mut();
    headers.insert(hyper::header::HOST, authority.parse().map_err(|_| HttpsError::Resolve(format!("{host:?} is no host name")))?);
    headers.insert(hyper::header::USER_AGENT, hyper::header::HeaderValue::from_static(concat!("Sluice/", env!("CARGO_PKG_VERSION"))));
    headers.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    let mut last = HttpsError::Resolve(format!("{host} has no address"));
    // Each address gets its share of the time, so one that is black-holed leaves some to
    // the others; a handshake that fails on one is tried on the next.
    let count = addrs.len().max(1) as u32;
    for ip in addrs {
        let connecting = tokio::time::timeout(CONNECT_TIMEOUT / count, tokio::net::TcpStream::connect(SocketAddr::new(ip, port)));
        let stream = match connecting.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                last = HttpsError::Connect(format!("{ip}: {e}"));
                continue;
            }
            Err(_) => {
                last = HttpsError::Connect(format!("{ip}: timed out"));
                continue;
            }
        };
        let tls = match tokio_rustls::TlsConnector::from(tls.clone()).connect(name.clone(), stream).await {
            Ok(tls) => tls,
            Err(e) => {
                last = HttpsError::Tls(e.to_string());
                continue;
            }
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| HttpsError::Http(e.to_string()))?;
        // Driven beside the request until the server closes (Connection: close), at most LINGER.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(LINGER, connection).await;
        });
        return sender.send_request(request).await.map_err(|e| HttpsError::Http(e.to_string()));
    }
    Err(last)
}
