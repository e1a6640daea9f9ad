//! The checks that span several keys, and the warnings: run on a parsed config with the text
//! it came from, so each message can name the key and its line.

use std::time::Duration;

use super::{Config, ConfigError, ListenerMode, fingerprint_key};
use crate::smtp::address;

impl Config {
    pub(super) fn find_warnings(&self, text: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        let host = &self.hostname.0;
        if !host.contains('.') {
            let whence = match line_of(text, "hostname").as_str() {
                "" => " (the machine's name, as no hostname is set)".to_string(),
                at => at.to_string(),
            };
            warnings.push(format!(
                "hostname: {host:?}{whence} is not a fully qualified domain name; MX hosts may refuse it in EHLO (RFC 5321 4.1.1.1)"
            ));
        }
        warnings
    }

    /// Checks that span several keys; the line is found from the key's text.
    pub(super) fn validate(&self, text: &str) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| ConfigError(format!("{key}: {msg}{}", line_of(text, key)));
        let host = &self.hostname.0;
        if !host.is_ascii() || host.starts_with('[') || address::check_domain(host).is_err() {
            return Err(err("hostname", format!("invalid host name {host:?}")));
        }
        if let Some(p) = &self.postmaster
            && let Err(e) = address::parse_mailbox(p, true)
        {
            return Err(err("postmaster", format!("invalid address {p:?}: {}", e.text())));
        }
        if self.listeners.is_empty() {
            return Err(err("listeners", "at least one listener is required".into()));
        }
        if let Some(everyone) = self.trusted_networks.iter().find(|n| n.covers_everyone())
            && !self.allow_open_relay
        {
            let msg = format!(
                "{everyone} lets anyone relay through this host (an open relay); list your own networks, or set allow_open_relay: true if that is really meant"
            );
            return Err(err("trusted_networks", msg));
        }
        let l = &self.limits;
        if l.reserved_for_trusted >= l.max_connections {
            let msg = format!("{} leaves no connection for anyone else (max_connections is {})", l.reserved_for_trusted, l.max_connections);
            return Err(err("reserved_for_trusted", msg));
        }
        if let Some(group) = &self.admin.group
            && crate::sys::group_id(group).is_none()
        {
            return Err(ConfigError(format!("admin.group: no group {group:?} on this system{}", line_of(text, "group"))));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            // Port 0 (any free port, used by tests) cannot collide.
            if l.address.port() != 0 && self.listeners[..i].iter().any(|o| o.address == l.address) {
                return Err(err("listeners", format!("address {} is listed twice", l.address)));
            }
        }
        let needs_auth = self.listeners.iter().any(|l| l.mode != ListenerMode::Relay);
        if needs_auth && self.tls.is_none() {
            return Err(err("listeners", "submission and submissions listeners need a tls section".into()));
        }
        if needs_auth && self.auth.users_file.is_none() {
            return Err(err("listeners", "submission and submissions listeners need auth.users_file".into()));
        }
        if let Some(tls) = &self.tls
            && !tls.self_signed_if_missing
        {
            for (key, path) in [("certificate", &tls.certificate), ("private_key", &tls.private_key)] {
                if !path.is_file() {
                    return Err(err(key, format!("file {} does not exist (or set self_signed_if_missing: true)", path.display())));
                }
            }
        }
        if let Some(users) = &self.auth.users_file
            && !users.is_file()
        {
            return Err(err("users_file", format!("file {} does not exist (create it with `sluice passwd USER`)", users.display())));
        }
        let d = &self.delivery;
        if let Some(name) = &d.ehlo_name
            && (!name.0.contains('.') || address::check_domain(&name.0).is_err())
        {
            return Err(err("ehlo_name", format!("{:?} is not a fully qualified domain name", name.0)));
        }
        if d.retry.is_empty() || d.retry.iter().any(|r| r.0.is_zero()) {
            return Err(err("retry", "needs at least one interval, none of them zero".into()));
        }
        if d.max_recipients_per_transaction == 0
            || d.max_deliveries_per_connection == 0
            || d.max_connections_per_destination == 0
            || d.max_concurrent_deliveries == 0
            || d.max_connections == 0
        {
            return Err(err("delivery", "recipient, delivery and connection limits must be positive".into()));
        }
        for rule in &d.destinations {
            rule.check().map_err(|e| err("destinations", e))?;
        }
        if d.backoff.initial.0.is_zero() || d.backoff.max.0 < d.backoff.initial.0 || d.backoff.after_failures == 0 {
            return Err(err("backoff", "initial must be positive, max at least initial, after_failures at least 1".into()));
        }
        if let Some(domain) = d.routes.keys().chain(d.tls_policies.keys()).find(|k| address::check_domain(k).is_err()) {
            return Err(err("delivery", format!("{domain:?} is not a domain")));
        }
        // Port 465 speaks TLS from the first byte (RFC 8314); delivery starts in plain text and
        // would wait for a greeting that never comes.
        let implicit =
            d.smarthost.iter().map(|h| ("smarthost", h)).chain(d.routes.values().map(|h| ("routes", h))).find(|(_, h)| h.port == 465);
        if let Some((key, hop)) = implicit {
            let msg = format!(
                "{}:465 is implicit TLS (submissions), which delivery does not speak; use the next hop's port 587 (STARTTLS)",
                hop.host
            );
            return Err(err(key, msg));
        }
        if let Some(auth) = &d.smarthost_auth {
            if d.smarthost.is_none() {
                return Err(err("smarthost_auth", "needs delivery.smarthost".into()));
            }
            if !auth.password_file.is_file() {
                return Err(err("password_file", format!("file {} does not exist", auth.password_file.display())));
            }
        }
        if let Some(missing) = d.tls_trust.iter().find(|p| !p.is_file()) {
            return Err(err("tls_trust", format!("file {} does not exist", missing.display())));
        }
        if let Some(bad) = self.client_certificates.keys().find(|k| fingerprint_key(k).is_none()) {
            return Err(err("client_certificates", format!("{bad:?} is not a SHA-256 fingerprint (64 hex digits)")));
        }
        if self.listeners.iter().any(|l| l.request_client_certificates) && self.tls.is_none() {
            return Err(err("request_client_certificates", "needs a tls section".into()));
        }
        if !self.starttls_policy.require_tls.is_empty() && self.tls.is_none() {
            return Err(err("require_tls", "needs a tls section to offer STARTTLS".into()));
        }
        if self.listeners.iter().any(|l| !(-9..=9).contains(&l.default_priority)) {
            return Err(err("default_priority", "must be between -9 and 9 (RFC 6710)".into()));
        }
        if self.auth.user_priorities.values().any(|p| !(-9..=9).contains(p)) {
            return Err(err("user_priorities", "priorities must be between -9 and 9 (RFC 6710)".into()));
        }
        if self.auth.max_failures == 0 {
            return Err(err("max_failures", "must be at least 1".into()));
        }
        let limits = &self.limits;
        if limits.max_message_size == 0 || limits.max_recipients == 0 || limits.max_hops == 0 {
            return Err(err("limits", "max_message_size, max_recipients and max_hops must be positive".into()));
        }
        if limits.max_header_size < 1024 {
            return Err(err("max_header_size", "must be at least 1024 bytes".into()));
        }
        if limits.max_data_time.0 < limits.data_timeout.0 {
            return Err(err("max_data_time", "must be at least data_timeout".into()));
        }
        if limits.max_line_length < crate::smtp::data::MAX_TEXT_LINE {
            return Err(err("max_line_length", "must be at least 998 (RFC 5321 4.5.3.1.6)".into()));
        }
        if limits.max_connections == 0 || limits.max_connections_per_ip == 0 || limits.max_errors == 0 {
            return Err(err("limits", "connection and error limits must be positive".into()));
        }
        if limits.command_timeout.0 < Duration::from_secs(1) || limits.data_timeout.0 < Duration::from_secs(1) {
            return Err(err("limits", "timeouts must be at least 1s".into()));
        }
        if !(1 << 20..=1 << 30).contains(&self.spool.segment_size) {
            return Err(err("segment_size", "must be between 1 MiB and 1 GiB".into()));
        }
        if self.spool.commit_window.0 > Duration::from_millis(100) {
            return Err(err("commit_window", "must be at most 100ms (every 250 waits for it)".into()));
        }
        Ok(())
    }
}

/// ` at line N` for the first line that holds `key:`, or nothing if it is not written out.
fn line_of(text: &str, key: &str) -> String {
    let needle = format!("{key}:");
    text.lines()
        .position(|l| {
            l.trim_start().trim_start_matches("- ").trim_start_matches('{').trim_start().starts_with(&needle)
                || l.contains(&format!(" {needle}"))
        })
        .map(|i| format!(" at line {}", i + 1))
        .unwrap_or_default()
}
