//! The metrics port: `GET /metrics` (Prometheus text), `/healthz` and `/readyz` (200 or 503
//! with a JSON body naming each check, `crate::health`). Anything else is 404, any other
//! method 405. Served with hyper, HTTP/1.1 only; a slow or idle client is cut off, and at
//! most [`MAX_CONNECTIONS`] are served at once and [`MAX_PER_ADDRESS`] from one address (an
//! IPv6 /64), so a scraper gone wrong cannot exhaust the daemon and one peer alone cannot
//! take every slot.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::health::{self, Facts};

pub const MAX_CONNECTIONS: usize = 64;
/// Connections one address (or IPv6 /64) may hold at once; more are closed at accept. A
/// Prometheus server uses one keep-alive connection, so this leaves room for a probe and a
/// person behind the same address.
pub const MAX_PER_ADDRESS: usize = 8;
/// A request's header must arrive within this, and a connection ends after its lifetime.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// What the daemon knows right now (gathered per request).
pub type FactsSource = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Facts> + Send>> + Send + Sync>;

/// Series read from live state at each scrape (`crate::metrics::text`), appended to the
/// recorder's.
pub type ExtraSeries = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the port reads from: the recorder, the live series and the health facts.
#[derive(Clone)]
pub struct Sources {
    pub handle: PrometheusHandle,
    pub extra: ExtraSeries,
    pub facts: FactsSource,
}

/// Serves the metrics port until shutdown.
pub async fn serve(listener: TcpListener, sources: Sources, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = PerAddress::new(MAX_PER_ADDRESS);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(address_slot) = per_address.take(peer.ip()) else { continue }; // dropped: closed
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, sources.clone()));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
            drop(address_slot);
        });
    }
}

/// Counts the open connections per peer address (also the HTTP API's).
#[derive(Clone)]
pub(crate) struct PerAddress {
    table: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One connection's place in [`PerAddress`], given back on drop.
pub(crate) struct AddressSlot {
    table: PerAddress,
    address: IpAddr,
}

impl PerAddress {
    /// At most `max` connections from one address.
    pub(crate) fn new(max: usize) -> PerAddress {
        PerAddress { table: Arc::default(), max }
    }

    /// An IPv6 peer is counted by its /64 (one host commonly holds the whole prefix).
    pub(crate) fn take(&self, address: IpAddr) -> Option<AddressSlot> {
        let address = match address {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
            v4 => v4,
        };
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let open = table.entry(address).or_insert(0);
        if *open >= self.max {
            return None;
        }
        *open += 1;
        Some(AddressSlot { table: self.clone(), address })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut table = self.table.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = table.get_mut(&self.address) {
            *open -= 1;
            if *open == 0 {
                table.remove(&self.address); // an address that left takes no memory
            }
        }
    }
}

async fn answer(req: Request<Incoming>, sources: Sources) -> Result<Response<Full<Bytes>>, Infallible> {
    let Sources { handle, extra, facts } = sources;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let mut text = handle.render();
            extra(&mut text);
            super::process::render(&mut text);
            health_series(&health::health(&facts().await), &mut text);
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/healthz" => verdict(health::health(&facts().await)),
        "/readyz" => verdict(health::readiness(&facts().await)),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: /metrics, /healthz, /readyz\n".into()),
    })
}

/// `/healthz`'s checks as series, so an alert can fire on them without a probe.
fn health_series(v: &health::Verdict, out: &mut String) {
    let mut g = super::text::Gauge::new(
        out,
        "sluice_health_check",
        "1 while the check passes (spool: commits and has room; listeners: every one accepts)",
    );
    g.labelled(&[("check", "spool")], if v.spool == "ok" { 1.0 } else { 0.0 });
    g.labelled(&[("check", "listeners")], if v.listeners_down.is_empty() { 1.0 } else { 0.0 });
}

fn verdict(v: health::Verdict) -> Response<Full<Bytes>> {
    let status = if v.healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = serde_json::to_string(&v).unwrap_or_default();
    body.push('\n');
    reply(status, "application/json", body)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response.headers_mut().insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    response
}
