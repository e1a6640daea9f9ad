//! The reporting period: at its end (a UTC day, a few seconds to a minute after midnight, so
//! not every sender reports at once) each domain's counts become an aggregate report, sent to
//! every `rua` of the domain's `_smtp._tls` record. `mailto:` reports are queued like any
//! other mail (durably, before this counts them sent), without MTA-STS or required TLS (RFC
//! 8460 3: reports go despite TLS failures) and not counted in the next report; an `https:`
//! report that fails is kept in the spool and posted again every hour, for up to a day.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::message::ReportMail;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::delivery::tls_rpt::{Counts, ReportUri, parse_record};
use crate::dns::TxtAnswer;
use crate::metrics as m;
use crate::spool::{Envelope, Shelf, Spool};

/// An HTTPS report is posted again for this long after its first failure...
const KEEP_FOR_RETRY: u64 = 86_400;
/// ...once an hour (once a period, when the period is shorter).
const RETRY_EVERY: u64 = 3600;
/// One POST, connection to answer.
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// The destinations of one record used at most (a record could name any number of
/// third-party addresses to mail every day).
const MAX_RUA: usize = 4;

/// What the reporting job needs.
pub struct Reporter {
    pub delivery: Arc<Delivery>,
    pub spool: Arc<dyn Spool>,
    /// Wakes the queue runner for a report queued by mail.
    pub notify: Arc<Notify>,
}

/// An HTTPS report waiting to be posted again.
#[derive(Serialize, Deserialize)]
struct Pending {
    url: String,
    domain: String,
    /// The gzipped JSON, base64.
    body: String,
    tries: u32,
    /// Unix seconds of the latest try.
    #[serde(default)]
    tried: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Up to a tenth of the period, at most a minute: RFC 8460 5.1 asks senders not to report at
/// the same moment.
fn jitter(period: u64) -> u64 {
    let mut byte = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    u64::from(u16::from_le_bytes(byte)) % ((period / 10).clamp(1, 60))
}

/// Runs until shutdown: at each period's end, the reports; every hour, the retries.
pub async fn run(reporter: Reporter, mut shutdown: watch::Receiver<bool>) {
    let retry_every = || RETRY_EVERY.min(reporter.delivery.config().delivery.tls_rpt.period.0.as_secs().max(1));
    let mut next_retry = unix_now() + retry_every();
    // The counts an earlier run kept at its stop (or latest hour) go into this period's.
    if let Ok(Some(kept)) = reporter.spool.recall(Shelf::TlsCounts, COUNTS_KEY, unix_now()) {
        reporter.delivery.tls_reports().restore(&kept);
        let _ = reporter.spool.forget(Shelf::TlsCounts, COUNTS_KEY);
    }
    loop {
        let period = reporter.delivery.config().delivery.tls_rpt.period.0.as_secs().max(1);
        let now = unix_now();
        let end = (now / period + 1) * period;
        let report_at = end + jitter(period);
        let wake = report_at.min(next_retry.max(now));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(wake - now)) => {}
            _ = shutdown.changed() => return reporter.keep_counts().await,
        }
        let config = reporter.delivery.config();
        if unix_now() >= report_at {
            let (start, domains) = reporter.delivery.tls_reports().take(end);
            reporter.keep_counts().await;
            if config.delivery.tls_rpt.enabled {
                for (domain, counts) in domains {
                    // A stop waits for the report under way, not for the rest.
                    if *shutdown.borrow() {
                        return;
                    }
                    reporter.report(&config, &domain, &counts, start, end - 1).await;
                }
            }
        }
        if unix_now() >= next_retry {
            reporter.retry(&shutdown, retry_every()).await;
            reporter.keep_counts().await;
            next_retry = unix_now() + retry_every();
        }
    }
}

/// Where the period's counts are kept over a restart.
const COUNTS_KEY: &str = "period";

impl Reporter {
    /// Keeps the period's counts so far in the spool (a stop, the hour, a period's end), for
    /// the next run to report. A kill -9 loses what came after the latest of these.
    async fn keep_counts(&self) {
        let snapshot = self.delivery.tls_reports().snapshot();
        let result = match self.spool.remember(Shelf::TlsCounts, COUNTS_KEY, unix_now() + 7 * 86_400, &snapshot) {
            Ok(durable) => durable.wait().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!("keeping the TLS-RPT counts failed: {e}");
        }
    }

    async fn report(&self, config: &Config, domain: &str, counts: &Counts, start: u64, end: u64) {
        let dns = self.delivery.dns();
        let uris = match dns.txt(&format!("_smtp._tls.{domain}")).await {
            TxtAnswer::Records(texts) => match parse_record(texts.iter().map(String::as_str)) {
                Ok(uris) => uris,
                Err(why) => {
                    tracing::debug!(domain, "no TLS report: {why}");
                    return;
                }
            },
            TxtAnswer::None => return,
            TxtAnswer::Temporary(why) => {
                tracing::warn!(domain, "TLS report not sent: the _smtp._tls lookup failed: {why}");
                return;
            }
        };
        let s = &config.delivery.tls_rpt;
        let submitter = config.hostname.0.as_str();
        // Letters and digits only (RFC 8460 5.3's unique-id), unique per period and domain.
        let report_id = format!("{start}{}", hex_of(domain));
        let organization = s.organization.clone().unwrap_or_else(|| submitter.to_string());
        let contact = s.contact.clone().unwrap_or_else(|| config.postmaster().to_string());
        let json = match serde_json::to_vec(&counts.report(&organization, &contact, &report_id, start, end)) {
            Ok(json) => json,
            Err(e) => return tracing::error!(domain, "TLS report: {e}"),
        };
        let gzipped = gzip(&json);
        if uris.len() > MAX_RUA {
            tracing::warn!(domain, destinations = uris.len(), "TLS report sent to the first {MAX_RUA} rua destinations only");
        }
        for uri in uris.into_iter().take(MAX_RUA) {
            match uri {
                ReportUri::Mailto(to) => self.mail(config, domain, &to, &report_id, (start, end), &gzipped).await,
                ReportUri::Https(url) => {
                    let pending = Pending {
                        url,
                        domain: domain.to_string(),
                        body: base64::engine::general_purpose::STANDARD.encode(&gzipped),
                        tries: 0,
                        tried: 0,
                    };
                    let key = format!("{report_id} {}", pending.url);
                    self.post_or_keep(&key, pending, unix_now() + KEEP_FOR_RETRY).await;
                }
            }
        }
    }

    async fn mail(&self, config: &Config, domain: &str, to: &str, report_id: &str, (start, end): (u64, u64), gzipped: &[u8]) {
        let Ok(rcpt) = crate::smtp::address::parse_mailbox(to, true) else {
            return tracing::warn!(domain, to, "TLS report not sent: the rua address is not one");
        };
        let from = config.delivery.tls_rpt.from.clone().unwrap_or_else(|| config.postmaster().to_string());
        let now = unix_now();
        // The file name's sender: the domain of the contact address (RFC 8460 5.3).
        let contact = config.delivery.tls_rpt.contact.clone().unwrap_or_else(|| config.postmaster().to_string());
        let sender = contact.rsplit_once('@').map_or(config.hostname.0.as_str(), |(_, d)| d).to_string();
        let body =
            ReportMail { from: &from, to, domain, submitter: &config.hostname.0, sender: &sender, report_id, start, end, now, gzipped }
                .render();
        // Sent like our bounces: a null return path, so a failed report makes no report. As
        // if marked TLS-Required: No: no published policy or required TLS holds it back (RFC
        // 8460 3), and its session is not counted.
        let mut envelope = Envelope::report(self.spool.new_queue_id(), rcpt, &config.hostname.0, now);
        envelope.params.tls_optional = true;
        let queue_id = envelope.queue_id.clone();
        let stored = match self.spool.store(envelope, &[&body]) {
            Ok(durable) => durable.wait().await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(()) => {
                metrics::counter!(m::TLS_RPT_REPORTS, "via" => "mailto", "result" => "queued").increment(1);
                tracing::info!(queue_id = %queue_id, domain, to, report_id, "TLS report queued");
                self.notify.notify_one();
            }
            Err(e) => {
                metrics::counter!(m::TLS_RPT_REPORTS, "via" => "mailto", "result" => "failed").increment(1);
                tracing::warn!(domain, to, "TLS report not queued: {e}");
            }
        }
    }

    /// Posts the report; one that fails is kept under `key` until `expires`.
    async fn post_or_keep(&self, key: &str, mut pending: Pending, expires: u64) {
        let body = base64::engine::general_purpose::STANDARD.decode(&pending.body).unwrap_or_default();
        pending.tries += 1;
        pending.tried = unix_now();
        match tokio::time::timeout(POST_TIMEOUT, self.post(&pending.url, body)).await.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(()) => {
                metrics::counter!(m::TLS_RPT_REPORTS, "via" => "https", "result" => "sent").increment(1);
                tracing::info!(domain = pending.domain, url = pending.url, tries = pending.tries, "TLS report posted");
                let _ = self.spool.forget(Shelf::TlsReports, key);
            }
            Err(why) => {
                metrics::counter!(m::TLS_RPT_REPORTS, "via" => "https", "result" => "failed").increment(1);
                tracing::warn!(
                    domain = pending.domain,
                    url = pending.url,
                    tries = pending.tries,
                    "TLS report not posted (kept for a retry): {why}"
                );
                let kept = serde_json::to_vec(&pending)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| self.spool.remember(Shelf::TlsReports, key, expires, &bytes).map_err(|e| e.to_string()));
                match kept {
                    Ok(durable) => {
                        let _ = durable.wait().await;
                    }
                    Err(e) => tracing::warn!(domain = pending.domain, "keeping the TLS report failed: {e}"),
                }
            }
        }
    }

    /// Posts again the kept reports whose latest try is `every` seconds old.
    async fn retry(&self, shutdown: &watch::Receiver<bool>, every: u64) {
        let now = unix_now();
        let spool = self.spool.clone();
        let kept = match tokio::task::spawn_blocking(move || spool.shelved(Shelf::TlsReports, now)).await {
            Ok(Ok(kept)) => kept,
            Ok(Err(e)) => return tracing::warn!("reading kept TLS reports: {e}"),
            Err(e) => return tracing::warn!("reading kept TLS reports: {e}"),
        };
        for (key, value, expires) in kept {
            if *shutdown.borrow() {
                return;
            }
            match serde_json::from_slice::<Pending>(&value) {
                Ok(pending) if now.saturating_sub(pending.tried) + every / 10 >= every => self.post_or_keep(&key, pending, expires).await,
                Ok(_) => {}
                Err(_) => {
                    let _ = self.spool.forget(Shelf::TlsReports, &key);
                }
            }
        }
        let _ = self.spool.forget_expired(Shelf::TlsReports, now);
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> Result<(), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        let host = uri.host().ok_or_else(|| format!("{url:?} names no host"))?.to_string();
        let port = uri.port_u16().unwrap_or(443);
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let request = hyper::Request::post(path)
            .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let tls = self.delivery.verified_tls();
        let response =
            crate::delivery::https::send(&host, port, request, self.delivery.dns().as_ref(), &tls).await.map_err(|e| e.to_string())?;
        match response.status() {
            s if s.is_success() => Ok(()),
            s => Err(format!("answered {s}")),
        }
    }
}

fn hex_of(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_are_gzip_and_the_jitter_is_bounded() {
        use std::io::Read;
        let gz = super::gzip(b"{\"report\":1}");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut text).unwrap();
        assert_eq!(text, "{\"report\":1}");
        assert!((0..100).all(|_| super::jitter(86_400) < 60 && super::jitter(3) < 1));
    }
}
