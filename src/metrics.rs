//! Every metric name in one place, with its help text. Names are prefixed `sluice_`.

use std::net::SocketAddr;

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
pub const DELIVERY_ATTEMPTS: &str = "sluice_delivery_attempts_total";
pub const DELIVERED: &str = "sluice_delivery_delivered_total";
pub const DEFERRED: &str = "sluice_delivery_deferred_total";
pub const BOUNCED: &str = "sluice_delivery_bounced_total";
pub const DELIVERY_TLS: &str = "sluice_delivery_tls_total";
pub const DELIVERY_LATENCY: &str = "sluice_delivery_latency_seconds";
pub const DELIVERY_IO_BACKEND: &str = "sluice_delivery_io_backend";
pub const DESTINATION_SUSPENDED: &str = "sluice_destination_suspended";
pub const DESTINATION_SUSPENSIONS: &str = "sluice_destination_suspensions_total";
pub const SHAPING_POSTPONED: &str = "sluice_shaping_postponed_total";
pub const QUEUE_IN_FLIGHT: &str = "sluice_queue_in_flight";
pub const ACCOUNTING_DROPPED: &str = "sluice_accounting_dropped_total";
pub const ACCOUNTING_LAG: &str = "sluice_accounting_lag_seconds";
pub const ACCOUNTING_WAITING: &str = "sluice_accounting_waiting_records";

/// Installs the Prometheus exporter on `address` (HTTP, path /metrics) and describes the metrics.
pub fn install(address: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
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
        .and_then(|b| b.install())
        .map_err(|e| format!("metrics exporter on {address}: {e}"))?;
    describe();
    Ok(())
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
    describe_counter!(
        DELIVERY_CONNECTIONS_DISCARDED,
        "Pooled outbound connections found unusable (reason: closed by the peer, unread data, died in use before an answer)"
    );
    describe_counter!(DELIVERY_ATTEMPTS, "Delivery attempts of one message to one destination");
    describe_counter!(DELIVERED, "Recipients delivered");
    describe_counter!(DEFERRED, "Recipients deferred for a later attempt");
    describe_counter!(BOUNCED, "Recipients bounced, by status class");
    describe_counter!(DELIVERY_TLS, "Outbound connections by TLS version (or none)");
    describe_gauge!(DESTINATION_SUSPENDED, "1 while a destination is suspended (it throttled us, or could not be reached)");
    describe_counter!(DESTINATION_SUSPENSIONS, "Destination suspensions, by reason (throttled, unreachable)");
    describe_counter!(SHAPING_POSTPONED, "Recipient groups put back in the queue by shaping, by reason (suspended, rate)");
    describe_gauge!(DELIVERY_IO_BACKEND, "1 for the I/O backend the delivery workers run on (io_uring or epoll)");
    describe_histogram!(DELIVERY_LATENCY, Unit::Seconds, "From arrival to the 250 of the destination, per recipient");
    describe_gauge!(QUEUE_IN_FLIGHT, "Messages being delivered now");
    describe_counter!(ACCOUNTING_DROPPED, "Accounting records lost: the writer was behind, or the file could not be opened or written");
    describe_gauge!(ACCOUNTING_LAG, Unit::Seconds, "Age of the oldest record in the accounting writer's last batch (0 when idle)");
    describe_gauge!(ACCOUNTING_WAITING, "Accounting records waiting for the writer");
    describe_counter!(AUTH_ATTEMPTS, "AUTH attempts by result: success, failure, locked_out, temporary_failure");
}
