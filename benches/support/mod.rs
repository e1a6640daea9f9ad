//! What several benches share (a directory, so cargo does not take it for a bench of its own).

use sluice::smtp::address::Mailbox;
use sluice::smtp::server::{RecipientRule, SessionConfig};

/// A server session as a relay listener would run it, without TLS or AUTH: the limits of
/// `config.example.yaml`, postmaster at `domain`.
pub fn session_config(hostname: &str, domain: &str) -> SessionConfig {
    SessionConfig {
        hostname: hostname.into(),
        max_message_size: 50 << 20,
        max_recipients: 1000,
        max_line: 998,
        max_errors: 20,
        postmaster: Mailbox { local: "postmaster".into(), domain: domain.into() },
        tls_available: false,
        auth_available: false,
        require_auth: false,
        address_literals: false,
        tls_only_recipients: RecipientRule::never(),
        check_recipient_domains: false,
    }
}
