//! Integration tests over real sockets on 127.0.0.1, one scenario per file, in one test
//! binary so the suite links once.

mod common;

mod admin_queue_list;
mod auth;
mod check_config;
mod client_certificates;
mod crash_recovery;
mod delivery_bounce;
mod delivery_dns;
mod delivery_failures;
mod delivery_io;
mod delivery_mx;
mod delivery_next_mx;
mod delivery_notices;
mod delivery_pool;
mod delivery_restart;
mod delivery_retry;
mod delivery_smarthost;
mod delivery_split;
mod delivery_tls;
mod delivery_tls_required;
mod disk_full;
mod durability_strace;
mod extensions;
mod hop_limit;
mod lettre_client;
mod limits;
mod metrics_endpoint;
mod passwd;
mod peers;
mod pipelining;
mod postmaster;
mod priority_and_rates;
mod relay_denied;
mod require_tls_recipients;
mod shaping;
mod shutdown_drain;
mod smuggling;
mod spool_failure;
mod starttls_policy;
mod submission_fixes;
mod timeouts;
mod tls_implicit;
mod tls_reload;
mod tls_starttls;
