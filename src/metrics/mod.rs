//! Every metric name in one place, with its help text. Names are prefixed `sluice_`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::PrometheusHandle;

pub mod http;
pub mod process;
pub mod text;

pub const CONNECTIONS_TOTAL: &str = "sluice_intake_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "sluice_intake_connections_active";
pub const CONNECTIONS_REFUSED: &str = "sluice_intake_connections_refused_total";
pub const MESSAGES_ACCEPTED: &str = "sluice_intake_messages_accepted_total";
pub const MESSAGES_REJECTED: &str = "sluice_intake_rejected_total";
pub const BYTES_ACCEPTED: &str = "sluice_intake_bytes_accepted_total";
pub const COMMIT_LATENCY: &str = "sluice_spool_commit_latency_seconds";
pub const DATA_REPLY_LATENCY: &str = "sluice_intake_end_of_data_to_reply_seconds";
pub const SPOOL_FSYNC_SECONDS: &str = "sluice_spool_fsync_seconds";
pub const SPOOL_MESSAGES_PER_FSYNC: &str = "sluice_spool_messages_per_fsync";
pub const SPOOL_MESSAGES: &str = "sluice_spool_messages";
pub const SPOOL_BYTES: &str = "sluice_spool_bytes";
pub const TLS_HANDSHAKES: &str = "sluice_intake_tls_handshakes_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "sluice_intake_tls_handshake_failures_total";
pub const AUTH_ATTEMPTS: &str = "sluice_intake_auth_total";
pub const DELIVERY_CONNECTIONS_OPENED: &str = "sluice_delivery_connections_opened_total";
pub const DELIVERY_CONNECTIONS_REUSED: &str = "sluice_delivery_connections_reused_total";
pub const DELIVERY_CONNECTIONS_DISCARDED: &str = "sluice_delivery_connections_discarded_total";
pub const DELIVERY_CONVERTED_7BIT: &str = "sluice_delivery_converted_7bit_total";
pub const DKIM_SIGNATURES: &str = "sluice_dkim_signatures_total";
pub const DKIM_FAILURES: &str = "sluice_dkim_signing_failures_total";
pub const DELIVERY_TLS_FALLBACKS: &str = "sluice_delivery_tls_fallbacks_total";
pub const TLS_RPT_REPORTS: &str = "sluice_tls_rpt_reports_total";
pub const TLS_RPT_UNCOUNTED: &str = "sluice_tls_rpt_uncounted_total";
pub const MTA_STS_FETCHES: &str = "sluice_mta_sts_fetches_total";
pub const CLUSTER_REDIS_UP: &str = "sluice_cluster_redis_up";
pub const CLUSTER_LEASES_HELD: &str = "sluice_cluster_leases_held";
pub const CLUSTER_LEASE_WAITS: &str = "sluice_cluster_lease_waits_total";
pub const DELIVERY_TLS_POLICY: &str = "sluice_delivery_tls_policy_total";
pub const API_REQUESTS: &str = "sluice_api_requests_total";
pub const API_REQUEST_SECONDS: &str = "sluice_api_request_seconds";
pub const DELIVERY_ATTEMPTS: &str = "sluice_delivery_attempts_total";
pub const DELIVERED: &str = "sluice_delivery_delivered_total";
pub const DEFERRED: &str = "sluice_delivery_deferred_total";
pub const BOUNCED: &str = "sluice_delivery_bounced_total";
pub const DELIVERY_TLS: &str = "sluice_delivery_tls_total";
pub const DELIVERY_LATENCY: &str = "sluice_delivery_latency_seconds";
pub const DELIVERY_IO_BACKEND: &str = "sluice_delivery_io_backend";
pub const DESTINATION_SUSPENSIONS: &str = "sluice_destination_suspensions_total";
pub const SHAPING_POSTPONED: &str = "sluice_shaping_postponed_total";
pub const QUEUE_IN_FLIGHT: &str = "sluice_queue_in_flight";
pub const BUILD_INFO: &str = "sluice_build_info";
pub const DNS_FAILURES: &str = "sluice_dns_failures_total";
pub const DELIVERY_TLS_FAILURES: &str = "sluice_delivery_tls_failures_total";
pub const ACCOUNTING_DROPPED: &str = "sluice_accounting_dropped_total";

/// The Prometheus recorder, installed once per process (tests start several relays in one),
/// with its upkeep (histogram summaries, idle labels) on a thread of its own.
pub fn recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE.get_or_init(install_recorder).clone()
}

fn install_recorder() -> Result<PrometheusHandle, String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(SPOOL_MESSAGES_PER_FSYNC.into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            )
        })
        .and_then(|b| {
            // From a relay on the LAN (milliseconds) to a retried destination (hours, days).
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(DELIVERY_LATENCY.into()),
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0],
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("sluice-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .map_err(|e| format!("metrics upkeep thread: {e}"))?;
    describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Present from the start, so an alert on its increase sees the first drop too.
    metrics::counter!(ACCOUNTING_DROPPED).absolute(0);
    process::started();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CONNECTIONS_TOTAL, "Intake connections accepted, by listener");
    describe_gauge!(CONNECTIONS_ACTIVE, "Intake connections open now");
    describe_counter!(CONNECTIONS_REFUSED, "Intake connections refused with 421, by reason");
    describe_counter!(MESSAGES_ACCEPTED, "Messages acknowledged with 250 after a durable commit");
    describe_counter!(MESSAGES_REJECTED, "Intake replies refusing a message or command, by reason");
    describe_counter!(BYTES_ACCEPTED, Unit::Bytes, "Message bytes acknowledged");
    describe_histogram!(COMMIT_LATENCY, Unit::Seconds, "From the end of a message's write to its durable commit");
    describe_histogram!(DATA_REPLY_LATENCY, Unit::Seconds, "From a message's end of data to its reply (250 once durable, or the refusal)");
    describe_histogram!(SPOOL_FSYNC_SECONDS, Unit::Seconds, "Duration of one group commit (flush and fsyncs)");
    describe_histogram!(SPOOL_MESSAGES_PER_FSYNC, "Writes made durable by one group commit");
    describe_gauge!(SPOOL_MESSAGES, "Messages in the spool");
    describe_gauge!(SPOOL_BYTES, Unit::Bytes, "Message bytes in the spool");
    describe_counter!(TLS_HANDSHAKES, "Completed intake TLS handshakes, by protocol version");
    describe_counter!(TLS_HANDSHAKE_FAILURES, "Intake TLS handshakes that failed or timed out");
    describe_counter!(DELIVERY_CONNECTIONS_OPENED, "Outbound connections opened");
    describe_counter!(DELIVERY_CONNECTIONS_REUSED, "Outbound transactions sent over a pooled connection");
    describe_counter!(DELIVERY_CONVERTED_7BIT, "8-bit messages converted to quoted-printable for a next hop without 8BITMIME");
    describe_counter!(DKIM_SIGNATURES, "DKIM signatures added at intake, by signing domain and algorithm");
    describe_counter!(DKIM_FAILURES, "Messages refused with 451 because a DKIM signature could not be made");
    describe_counter!(
        DELIVERY_TLS_FALLBACKS,
        "Connections sent in plain text under opportunistic TLS: retried after a failed handshake, or at once for a host remembered"
    );
    describe_counter!(TLS_RPT_REPORTS, "TLS-RPT aggregate reports, by how (mailto, https) and result (queued, sent, failed)");
    describe_counter!(
        TLS_RPT_UNCOUNTED,
        "Sessions not counted for TLS-RPT: the period already counts the most domains, policies per domain or failure kinds per policy it keeps"
    );
    describe_gauge!(CLUSTER_LEASES_HELD, "Connection leases this node holds on shared connection caps");
    describe_counter!(CLUSTER_LEASE_WAITS, "Times a new connection found its shared connection cap full and waited");
    describe_gauge!(CLUSTER_REDIS_UP, "1 while the cluster's Redis answers (shared limits apply), 0 while each node keeps to its share");
    describe_counter!(MTA_STS_FETCHES, "MTA-STS policy fetches, by result (ok or the RFC 8460 result type of the failure)");
    describe_counter!(
        DELIVERY_TLS_POLICY,
        "Destinations routed by MX records, by the TLS policy that applied (dane, dane-dnssec-failure, mta-sts-enforce, mta-sts-testing, mta-sts-mismatch, configured)"
    );
    describe_counter!(API_REQUESTS, "HTTP API requests, by key name (unknown for a key not in the keys file) and status");
    describe_histogram!(API_REQUEST_SECONDS, Unit::Seconds, "HTTP API message requests, arrival to answer (202: every message durable)");
    describe_counter!(
        DELIVERY_CONNECTIONS_DISCARDED,
        "Pooled outbound connections found unusable (reason: closed by the peer, unread data, died in use before an answer)"
    );
    describe_counter!(DELIVERY_ATTEMPTS, "Delivery attempts of one message to one destination");
    describe_counter!(DELIVERED, "Recipients delivered");
    describe_counter!(
        DEFERRED,
        "Recipients deferred for a later attempt, by reason (throttled, recipient, mailbox, policy, remote: the next hop said so; dns, connection, tls, loop, protocol, shaping, overflow, local: we could not get that far)"
    );
    describe_counter!(
        BOUNCED,
        "Recipients bounced, by reason (as for deferrals, and expired: past delivery.max_age; admin: sluice queue bounce)"
    );
    describe_counter!(DNS_FAILURES, "DNS lookups that failed for now (timeout, SERVFAIL, CNAME loop), by record type (mx, a, aaaa)");
    describe_counter!(
        DELIVERY_TLS_FAILURES,
        "Outbound TLS handshakes that failed (STARTTLS, or implicit TLS to the smarthost), by kind: certificate (not valid for the host, when verified), handshake, timeout, not_offered (required but not offered)"
    );
    describe_counter!(DELIVERY_TLS, "Outbound connections by TLS version (or none)");
    describe_counter!(
        DESTINATION_SUSPENSIONS,
        "Destination suspensions, by reason (throttled, unreachable); the log names the destination"
    );
    describe_counter!(SHAPING_POSTPONED, "Recipient groups put back in the queue by shaping, by reason (suspended, rate)");
    describe_gauge!(DELIVERY_IO_BACKEND, "1 for the I/O backend the delivery workers run on (io_uring or epoll)");
    describe_histogram!(DELIVERY_LATENCY, Unit::Seconds, "From arrival to the 250 of the destination, per recipient");
    describe_gauge!(QUEUE_IN_FLIGHT, "Messages being delivered now");
    describe_counter!(
        ACCOUNTING_DROPPED,
        "Accounting records lost: the writer was behind (65,536 records or 64 MiB waiting), or the file could not be opened or written"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the running build");
    describe_counter!(AUTH_ATTEMPTS, "AUTH attempts by result: success, failure, locked_out, temporary_failure");
}

#[cfg(test)]
mod tests {
    /// Metric names a source file defines: `pub const X: &str = "name"` and the series
    /// rendered at scrape time (`Gauge::new(out, "name"` and `Gauge::counter(out, "name"`).
    fn names_in(source: &str) -> Vec<String> {
        let mut names = Vec::new();
        for line in source.lines() {
            let t = line.trim_start();
            let constant = t.starts_with("pub const ") && t.contains(": &str = \"sluice_");
            let rendered = t.contains("Gauge::new(") || t.contains("Gauge::counter(");
            // Or a family in a table of families.
            let listed = t.starts_with("(\"sluice_") || t.starts_with("\"sluice_");
            let quoted = if constant || rendered || listed { line.split('"').nth(1) } else { None };
            if let Some(name) = quoted.filter(|n| n.starts_with("sluice_") || n.starts_with("process_")) {
                names.push(name.to_string());
            }
        }
        names
    }

    #[test]
    fn every_metric_is_documented_and_the_contrib_files_use_only_documented_ones() {
        let doc = include_str!("../../docs/METRICS.md");
        let sources = [
            include_str!("mod.rs"),
            include_str!("http.rs"),
            include_str!("process.rs"),
            include_str!("../queue/census.rs"),
            include_str!("../shaping/exposition.rs"),
            include_str!("../accounting/mod.rs"),
        ];
        let defined: Vec<String> = sources.iter().flat_map(|s| names_in(s)).collect();
        assert!(defined.len() > 40, "{defined:?}");
        for live in ["sluice_destination_suspended", "sluice_queue_messages", "process_cpu_seconds_total", "sluice_health_check"] {
            assert!(defined.iter().any(|d| d == live), "{live} not found in the sources: {defined:?}");
        }
        for name in &defined {
            assert!(doc.contains(&format!("| `{name}` |")), "{name} is not in docs/METRICS.md");
        }
        // Every series name the alerts and the dashboard use is one Sluice exports.
        for file in
            [include_str!("../../contrib/prometheus/sluice-alerts.yaml"), include_str!("../../contrib/grafana/sluice-dashboard.json")]
        {
            for word in file.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("sluice_") || word.starts_with("process_") {
                    let family = ["_bucket", "_sum", "_count"].iter().fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
                    assert!(defined.iter().any(|d| d == family), "{word} is used in contrib/ but not exported");
                }
            }
        }
    }
}
