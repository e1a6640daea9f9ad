//! The shaping keys of `delivery`: per-destination overrides and backoff.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HumanDuration, Rate};

/// Limits for the destinations a rule matches: recipient domains, or MX host names, each exact
/// or `*.suffix`. Every domain a rule matches shares its limits (all domains hosted at one
/// provider, say). Unset keys take the `delivery` defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationRule {
    /// Shown in metrics and `sluice queue summary` (default: the first pattern).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub mx: Vec<String>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub connection_rate: Option<Rate>,
    #[serde(default)]
    pub message_rate: Option<Rate>,
    #[serde(default)]
    pub max_deliveries_per_connection: Option<usize>,
    #[serde(default)]
    pub max_recipients_per_transaction: Option<usize>,
}

impl DestinationRule {
    pub fn label(&self) -> String {
        self.name.clone().or_else(|| self.domains.first().or(self.mx.first()).cloned()).unwrap_or_default()
    }

    /// One of the rule's domain patterns matches `domain`.
    pub fn names_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|p| matches_pattern(p, domain))
    }

    /// One of the rule's MX patterns matches `host`.
    pub fn names_host(&self, host: &str) -> bool {
        self.mx.iter().any(|p| matches_pattern(p, host))
    }

    /// Problems a config check reports.
    pub fn check(&self) -> Result<(), String> {
        if self.domains.is_empty() && self.mx.is_empty() {
            return Err("a destination needs domains or mx patterns".into());
        }
        if let Some(bad) = self.domains.iter().chain(&self.mx).find(|p| !valid_pattern(p)) {
            return Err(format!("{bad:?} is not a domain or *.domain pattern"));
        }
        if [self.max_connections, self.max_deliveries_per_connection, self.max_recipients_per_transaction].contains(&Some(0)) {
            return Err("connection, delivery and recipient limits must be positive".into());
        }
        Ok(())
    }
}

fn valid_pattern(p: &str) -> bool {
    let domain = p.strip_prefix("*.").unwrap_or(p);
    crate::smtp::address::check_domain(domain).is_ok()
}

/// `name` matches `pattern`: equal, or `*.suffix` and a subdomain of suffix (case-insensitive).
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First suspension; each one in a row doubles, up to `max`.
    #[serde(default = "default_initial")]
    pub initial: HumanDuration,
    #[serde(default = "default_max")]
    pub max: HumanDuration,
    /// Attempts in a row that reach no host before the destination is suspended (a 421 or
    /// a 4.7.x throttling reply suspends at once).
    #[serde(default = "default_after_failures")]
    pub after_failures: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { initial: default_initial(), max: default_max(), after_failures: default_after_failures() }
    }
}

fn default_initial() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_after_failures() -> u32 {
    5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_and_subdomains() {
        assert!(matches_pattern("example.com", "EXAMPLE.com"));
        assert!(!matches_pattern("example.com", "mx.example.com"));
        assert!(matches_pattern("*.google.com", "aspmx.l.google.com"));
        assert!(matches_pattern("*.google.com", "alt1.aspmx.l.google.com."));
        assert!(!matches_pattern("*.google.com", "google.com"));
        assert!(!matches_pattern("*.google.com", "evilgoogle.com"));
        assert!(valid_pattern("*.google.com") && valid_pattern("example.org"));
        assert!(!valid_pattern("*google.com") && !valid_pattern("a..b"));
    }
}
