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
            return Err(err("limits.reserved_for_trusted", msg));
        }
        if let Some(group) = &self.admin.group
            && crate::sys::group_id(group).is_none()
        {
            return Err(err("admin.group", format!("no group {group:?} on this system")));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            // Port 0 (any free port, used by tests) cannot collide.
            if l.address.port() != 0 && self.listeners[..i].iter().any(|o| o.address == l.address) {
                return Err(err(&format!("listeners[{i}].address"), format!("address {} is listed twice", l.address)));
            }
        }
        if let Some(i) = self.listeners.iter().position(|l| l.mode != ListenerMode::Relay) {
            let key = format!("listeners[{i}].mode");
            if self.tls.is_none() {
                return Err(err(&key, "submission and submissions listeners need a tls section".into()));
            }
            if self.auth.users_file.is_none() {
                return Err(err(&key, "submission and submissions listeners need auth.users_file".into()));
            }
        }
        if let Some(tls) = &self.tls
            && !tls.self_signed_if_missing
        {
            for (key, path) in [("tls.certificate", &tls.certificate), ("tls.private_key", &tls.private_key)] {
                if !path.is_file() {
                    return Err(err(key, format!("file {} does not exist (or set self_signed_if_missing: true)", path.display())));
                }
            }
        }
        if let Some(users) = &self.auth.users_file
            && !users.is_file()
        {
            return Err(err("auth.users_file", format!("file {} does not exist (create it with `sluice passwd USER`)", users.display())));
        }
        let d = &self.delivery;
        if let Some(name) = &d.ehlo_name
            && (!name.0.contains('.') || address::check_domain(&name.0).is_err())
        {
            return Err(err("delivery.ehlo_name", format!("{:?} is not a fully qualified domain name", name.0)));
        }
        if d.retry.is_empty() || d.retry.iter().any(|r| r.0.is_zero()) {
            return Err(err("delivery.retry", "needs at least one interval, none of them zero".into()));
        }
        let limits = [
            ("delivery.max_recipients_per_transaction", d.max_recipients_per_transaction),
            ("delivery.max_deliveries_per_connection", d.max_deliveries_per_connection),
            ("delivery.max_connections_per_destination", d.max_connections_per_destination),
            ("delivery.max_concurrent_deliveries", d.max_concurrent_deliveries),
            ("delivery.max_connections", d.max_connections),
        ];
        if let Some((key, _)) = limits.iter().find(|(_, n)| *n == 0) {
            return Err(err(key, "must be positive".into()));
        }
        for (i, rule) in d.destinations.iter().enumerate() {
            rule.check().map_err(|e| err(&format!("delivery.destinations[{i}]"), e))?;
            if rule.label() == "other" {
                // The metrics add up the idlest destinations under that name.
                return Err(err(&format!("delivery.destinations[{i}].name"), "\"other\" is reserved; choose another name".into()));
            }
        }
        if d.backoff.initial.0.is_zero() || d.backoff.max.0 < d.backoff.initial.0 || d.backoff.after_failures == 0 {
            return Err(err("delivery.backoff", "initial must be positive, max at least initial, after_failures at least 1".into()));
        }
        let keyed = d.routes.keys().map(|k| ("delivery.routes", k)).chain(d.tls_policies.keys().map(|k| ("delivery.tls_policies", k)));
        if let Some((key, domain)) = keyed.into_iter().find(|(_, k)| address::check_domain(k).is_err()) {
            return Err(err(key, format!("{domain:?} is not a domain")));
        }
        // Port 465 speaks TLS from the first byte (RFC 8314); a connection starting in plain
        // text would wait for a greeting that never comes.
        let starttls = d.smarthost_tls == super::SmarthostTls::Starttls;
        let smarthost = d.smarthost.iter().filter(|_| starttls).map(|h| ("delivery.smarthost", h));
        let implicit = smarthost.chain(d.routes.values().map(|h| ("delivery.routes", h))).find(|(_, h)| h.port == 465);
        if let Some((key, hop)) = implicit {
            let msg = match key {
                "delivery.smarthost" => format!(
                    "{}:465 is implicit TLS (submissions): set delivery.smarthost_tls: implicit, or use the smarthost's port 587 (STARTTLS)",
                    hop.host
                ),
                _ => format!(
                    "{}:465 is implicit TLS (submissions), which routes do not speak; use the next hop's port 587 (STARTTLS), or make it the smarthost with smarthost_tls: implicit",
                    hop.host
                ),
            };
            return Err(err(key, msg));
        }
        if let Some(auth) = &d.smarthost_auth {
            if d.smarthost.is_none() {
                return Err(err("delivery.smarthost_auth", "needs delivery.smarthost".into()));
            }
            if !auth.password_file.is_file() {
                return Err(err("delivery.smarthost_auth.password_file", format!("file {} does not exist", auth.password_file.display())));
            }
        }
        if let Some(missing) = d.tls_trust.iter().find(|p| !p.is_file()) {
            return Err(err("delivery.tls_trust", format!("file {} does not exist", missing.display())));
        }
        if self.cluster.nodes == 0 {
            return Err(err("cluster.nodes", "must be at least 1".into()));
        }
        if self.cluster.lease_ttl.0 < std::time::Duration::from_secs(3) {
            return Err(err("cluster.lease_ttl", "must be at least 3s (leases are renewed every third of it)".into()));
        }
        if let Some(redis) = &self.cluster.redis
            && let Err(e) = crate::cluster::check(redis)
        {
            let (key, why) = e.split_once(": ").unwrap_or(("cluster.redis", &e));
            return Err(err(key, why.to_string()));
        }
        if let Some(path) = d.dane.trust_anchors.as_deref() {
            crate::dns::dnssec::read_anchors(path).map_err(|e| err("delivery.dane.trust_anchors", e))?;
        }
        if let Some(bad) = self.client_certificates.keys().find(|k| fingerprint_key(k).is_none()) {
            return Err(err("client_certificates", format!("{bad:?} is not a SHA-256 fingerprint (64 hex digits)")));
        }
        if let Some(i) = self.listeners.iter().position(|l| l.request_client_certificates)
            && self.tls.is_none()
        {
            return Err(err(&format!("listeners[{i}].request_client_certificates"), "needs a tls section".into()));
        }
        if !self.starttls_policy.require_tls.is_empty() && self.tls.is_none() {
            return Err(err("starttls_policy.require_tls", "needs a tls section to offer STARTTLS".into()));
        }
        if let Some(i) = self.listeners.iter().position(|l| !(-9..=9).contains(&l.default_priority)) {
            return Err(err(&format!("listeners[{i}].default_priority"), "must be between -9 and 9 (RFC 6710)".into()));
        }
        if self.auth.user_priorities.values().any(|p| !(-9..=9).contains(p)) {
            return Err(err("auth.user_priorities", "priorities must be between -9 and 9 (RFC 6710)".into()));
        }
        if self.auth.max_failures == 0 {
            return Err(err("auth.max_failures", "must be at least 1".into()));
        }
        let limits = &self.limits;
        let positive = [
            ("limits.max_message_size", limits.max_message_size),
            ("limits.max_recipients", limits.max_recipients as u64),
            ("limits.max_hops", limits.max_hops as u64),
            ("limits.max_connections", limits.max_connections as u64),
            ("limits.max_connections_per_ip", limits.max_connections_per_ip as u64),
            ("limits.max_errors", limits.max_errors as u64),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, n)| *n == 0) {
            return Err(err(key, "must be positive".into()));
        }
        if limits.max_header_size < 1024 {
            return Err(err("limits.max_header_size", "must be at least 1024 bytes".into()));
        }
        if limits.max_data_time.0 < limits.data_timeout.0 {
            return Err(err("limits.max_data_time", "must be at least limits.data_timeout".into()));
        }
        if limits.max_line_length < crate::smtp::data::MAX_TEXT_LINE {
            return Err(err("limits.max_line_length", "must be at least 998 (RFC 5321 4.5.3.1.6)".into()));
        }
        for (key, timeout) in [("limits.command_timeout", limits.command_timeout), ("limits.data_timeout", limits.data_timeout)] {
            if timeout.0 < Duration::from_secs(1) {
                return Err(err(key, "must be at least 1s".into()));
            }
        }
        if self.accounting.max_size < 1 << 20 {
            // Smaller rotates (and fsyncs) every few records, keeping only `keep` files of them.
            return Err(err("accounting.max_size", "must be at least 1048576 (1 MiB)".into()));
        }
        self.dkim.check().map_err(|(key, msg)| err(&key, msg))?;
        self.check_api().map_err(|(key, msg)| err(&key, msg))?;
        if !(1 << 20..=1 << 30).contains(&self.spool.segment_size) {
            return Err(err("spool.segment_size", "must be between 1 MiB and 1 GiB".into()));
        }
        if self.spool.commit_window.0 > Duration::from_millis(100) {
            return Err(err("spool.commit_window", "must be at most 100ms (every 250 waits for it)".into()));
        }
        Ok(())
    }
}

/// ` at line N` for the key at `path` (`auth.users_file`, `listeners[1].default_priority`),
/// found by following the YAML's nesting, block or flow style, and never in a comment; nothing
/// when the key is not written out (its default is in force).
pub(super) fn line_of(text: &str, path: &str) -> String {
    locate(text, path).map(|i| format!(" at line {}", i + 1)).unwrap_or_default()
}

/// One line as the locator sees it: comment removed; a list item's `- ` counted as indent.
struct Line<'a> {
    indent: usize,
    content: &'a str,
    item: bool,
}

fn scan(text: &str) -> Vec<Option<Line<'_>>> {
    text.lines()
        .map(|raw| {
            let code = strip_comment(raw).trim_end();
            let trimmed = code.trim_start();
            if trimmed.is_empty() {
                return None;
            }
            let mut indent = code.len() - trimmed.len();
            let (content, item) = match trimmed.strip_prefix("- ").or_else(|| (trimmed == "-").then_some("")) {
                Some(rest) => {
                    indent += 2 + (rest.len() - rest.trim_start().len());
                    (rest.trim_start(), true)
                }
                None => (trimmed, false),
            };
            Some(Line { indent, content, item })
        })
        .collect()
}

/// The line without its comment: a `#` at the start or after a space, outside quotes.
fn strip_comment(line: &str) -> &str {
    let (mut quote, mut previous) = (None, ' ');
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

/// `key:` at the start of `content` (quoted or not): what follows it.
fn after_key<'a>(content: &'a str, key: &str) -> Option<&'a str> {
    let rest = content.strip_prefix(key).or_else(|| content.strip_prefix(&format!("\"{key}\"")))?;
    rest.strip_prefix(':').filter(|r| r.is_empty() || r.starts_with(' '))
}

/// `key:` as a key of the flow mapping `text` (`{ a: 1, key: 2 }`): what follows it.
fn in_flow<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(found) = text[from..].find(key) {
        let at = from + found;
        let before = text[..at].trim_end();
        if (before.ends_with('{') || before.ends_with(','))
            && let Some(rest) = after_key(&text[at..], key)
        {
            return Some(rest);
        }
        from = at + key.len();
    }
    None
}

fn locate(text: &str, path: &str) -> Option<usize> {
    let lines = scan(text);
    // Where the next key is looked for: lines start..end deeper than `parent`, or within the
    // flow text of one line.
    let (mut start, mut end, mut parent): (usize, usize, Option<usize>) = (0, lines.len(), None);
    let mut flow: Option<(usize, &str)> = None;
    let mut found = None;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let (line, value) = match flow {
            Some((line, text)) => (line, in_flow(text, key)?),
            None => {
                let deeper = |l: &Line| parent.is_none_or(|p| l.indent > p);
                let child = (start..end).filter_map(|i| lines[i].as_ref()).find(|l| deeper(l))?.indent;
                let i =
                    (start..end).find(|&i| lines[i].as_ref().is_some_and(|l| l.indent == child && after_key(l.content, key).is_some()))?;
                let l = lines[i].as_ref()?;
                (i, after_key(l.content, key)?.trim_start())
            }
        };
        found = Some(line);
        let block_end = |from: usize, indent: usize| {
            (from + 1..lines.len()).find(|&i| lines[i].as_ref().is_some_and(|l| l.indent <= indent)).unwrap_or(lines.len())
        };
        let own_indent = lines[line].as_ref().map_or(0, |l| l.indent);
        match (index, value) {
            (Some(_), v) if v.starts_with('[') => return Some(line), // a flow list: its line
            (Some(n), _) => {
                // The n-th `- ` item of the block below.
                let below = block_end(line, own_indent);
                let items: Vec<usize> = (line + 1..below).filter(|&i| lines[i].as_ref().is_some_and(|l| l.item)).collect();
                let first = lines[*items.first()?].as_ref()?.indent;
                let item = *items.iter().filter(|&&i| lines[i].as_ref().is_some_and(|l| l.indent == first)).nth(n)?;
                found = Some(item);
                let content = lines[item].as_ref()?.content;
                if content.starts_with('{') {
                    flow = Some((item, content));
                } else {
                    let next = (item + 1..below).find(|&i| lines[i].as_ref().is_some_and(|l| l.item && l.indent == first)).unwrap_or(below);
                    (start, end, parent) = (item, next, Some(first - 1));
                }
            }
            (None, v) if v.starts_with('{') => flow = Some((line, v)),
            (None, _) if flow.is_some() => {}
            (None, _) => (start, end, parent) = (line + 1, block_end(line, own_indent), Some(own_indent)),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::locate;

    const TEXT: &str = "\
# users_file: not here, a comment
hostname: relay.test   # hostname: nor here
auth:
  # users_file: nor in this comment
  max_failures: 3
  users_file: /etc/sluice/users
limits: { max_hops: 30, max_recipients: 0 }
listeners:
  - { address: \"127.0.0.1:25\", mode: relay }
  - address: \"127.0.0.1:587\"
    mode: submission
    default_priority: 12
delivery:
  routes: { \"a.test\": \"[mx.a.test]:25\" }
  backoff:
    initial: 0s
metrics:
  address: null
";

    #[test]
    fn keys_are_found_by_their_whole_path_and_never_in_comments() {
        let line = |path: &str| locate(TEXT, path).map(|i| i + 1);
        assert_eq!(line("hostname"), Some(2));
        assert_eq!(line("auth.users_file"), Some(6));
        assert_eq!(line("auth.max_failures"), Some(5));
        assert_eq!(line("limits.max_recipients"), Some(7));
        assert_eq!(line("listeners"), Some(8));
        assert_eq!(line("listeners[0].mode"), Some(9));
        assert_eq!(line("listeners[1].default_priority"), Some(12));
        assert_eq!(line("listeners[1].mode"), Some(11));
        assert_eq!(line("listeners[1]"), Some(10));
        assert_eq!(line("delivery.backoff.initial"), Some(16));
        assert_eq!(line("delivery.routes"), Some(14));
        assert_eq!(line("metrics.address"), Some(18));
        // Not written out: no line, rather than a wrong one.
        assert_eq!(line("users_file"), None, "only under auth");
        assert_eq!(line("delivery.retry"), None);
        assert_eq!(line("listeners[2].mode"), None);
        assert_eq!(line("auth.lockout"), None);
    }
}
