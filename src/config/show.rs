//! `sluice config show`: the effective config as YAML (`postconf`), the defaults alone
//! (`postconf -d`), or only what differs from them (`postconf -n`); and `check-config --json`.
//! What is printed parses back to the same config.

use serde_json::Value;

use super::{Config, ConfigError};

/// Every key with the value in force.
pub fn effective(config: &Config) -> Result<String, String> {
    serde_norway::to_string(config).map_err(|e| e.to_string())
}

/// Every key with its default (relative paths as the defaults name them).
pub fn defaults() -> Result<String, String> {
    effective(&Config::defaults())
}

/// Only the keys whose values differ from the defaults, nested as in the file.
pub fn changed(config: &Config) -> Result<String, String> {
    let ours = serde_json::to_value(config).map_err(|e| e.to_string())?;
    let base = serde_json::to_value(Config::defaults()).map_err(|e| e.to_string())?;
    let diff = difference(&ours, &base).unwrap_or(Value::Object(Default::default()));
    serde_norway::to_string(&diff).map_err(|e| e.to_string())
}

/// What of `ours` is not as in `base`: mappings key by key, anything else whole.
fn difference(ours: &Value, base: &Value) -> Option<Value> {
    match (ours, base) {
        (Value::Object(o), Value::Object(b)) => {
            let kept: serde_json::Map<String, Value> = o
                .iter()
                .filter_map(|(k, v)| match b.get(k) {
                    Some(bv) => difference(v, bv).map(|d| (k.clone(), d)),
                    None => Some((k.clone(), v.clone())),
                })
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        (o, b) if o == b => None,
        (o, _) => Some(o.clone()),
    }
}

impl Config {
    /// The config an empty file gives, without the checks (so it exists even where the
    /// machine's own name would fail them).
    pub fn defaults() -> Config {
        serde_norway::from_str("{}").expect("every key has a default")
    }
}

/// `check-config --json`: `{"ok": true, "warnings": [...]}`, or the error with its key and
/// line as separate fields where the message names them.
pub fn check_report(path: &std::path::Path, loaded: &Result<Config, ConfigError>) -> Value {
    match loaded {
        Ok(c) => serde_json::json!({ "ok": true, "file": path.display().to_string(), "warnings": c.warnings }),
        Err(e) => {
            let prefix = format!("{}: ", path.display());
            let text = e.0.strip_prefix(&prefix).unwrap_or(&e.0);
            let key = text.split_once(": ").map(|(k, _)| k).filter(|k| !k.is_empty() && !k.contains(char::is_whitespace));
            let line =
                text.rsplit_once("at line ").and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok());
            serde_json::json!({ "ok": false, "file": path.display().to_string(), "error": text, "key": key, "line": line })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const RICH: &str = "\
hostname: relay.example.net
trusted_networks: [\"10.0.0.0/8\", \"192.168.1.7\", \"2001:db8::/32\"]
require_tls_recipients: [\"ceo@example.com\", \"bank.example\"]
limits: { command_timeout: 1h30min, max_data_time: 250s, messages_per_ip: \"100/min burst 10\" }
delivery:
  smarthost: \"[mx.example.net]:587\"
  routes: { \"a.test\": \"b.test:2525\" }
  retry: [5min, 1h, 1d]
  message_rate: 10/s
  destinations:
    - { name: big, domains: [\"big.test\", \"*.big.test\"], message_rate: \"5/s\" }
";

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn what_show_prints_parses_back_to_the_same_config() {
        for text in [RICH, include_str!("../../config.example.yaml")] {
            let first = effective(&parse(text)).unwrap();
            let again = effective(&parse(&first)).unwrap();
            assert_eq!(first, again);
        }
        let shown = effective(&parse(RICH)).unwrap();
        for written in ["command_timeout: 1h30min", "max_data_time: 4min10s", "smarthost: '[mx.example.net]:587'", "192.168.1.7/32", "- 1d"]
        {
            assert!(shown.contains(written), "{written} not in:\n{shown}");
        }
    }

    #[test]
    fn changed_shows_only_what_differs_from_the_defaults() {
        let changed = changed(&parse("hostname: relay.example.net\nlimits: { max_hops: 30 }\n")).unwrap();
        assert_eq!(changed, "hostname: relay.example.net\nlimits:\n  max_hops: 30\n");
        // And the defaults parse as a config of their own.
        let d = defaults().unwrap();
        assert!(d.contains("max_hops: 100"), "{d}");
        serde_norway::from_str::<Config>(&d).unwrap();
    }

    /// Only the mappings of `v`, each empty but for the mappings inside it.
    fn skeleton(v: &Value) -> Value {
        match v {
            Value::Object(o) => Value::Object(o.iter().filter(|(_, v)| v.is_object()).map(|(k, v)| (k.clone(), skeleton(v))).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn an_empty_section_has_the_same_defaults_as_a_missing_one() {
        // A section's Default must agree with its keys' own defaults: `accounting: {}` and no
        // `accounting` at all are the same config.
        let defaults = serde_json::to_value(Config::defaults()).unwrap();
        let sections = serde_norway::to_string(&skeleton(&defaults)).unwrap();
        assert!(sections.contains("accounting: {}") && sections.contains("backoff: {}"), "{sections}");
        let from_sections: Config = serde_norway::from_str(&sections).unwrap();
        assert_eq!(serde_json::to_value(from_sections).unwrap(), defaults);
    }

    #[test]
    fn the_check_report_separates_key_and_line() {
        let path = Path::new("/etc/sluice/config.yaml");
        let err = Config::parse("hostname: a.b\nauth:\n  max_failures: 0\n", Path::new("/"))
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)));
        let r = check_report(path, &err);
        assert_eq!((r["ok"].as_bool(), r["key"].as_str(), r["line"].as_u64()), (Some(false), Some("auth.max_failures"), Some(3)), "{r}");
        let unknown = Config::parse("hostname: a.b\nbogus: 1\n", Path::new("/")).map_err(|e| ConfigError(e.0));
        let r = check_report(path, &unknown);
        assert_eq!((r["key"].as_str(), r["line"].as_u64()), (None, Some(2)), "{r}");
        let ok = Config::parse("hostname: a\n", Path::new("/")).map_err(|e| ConfigError(e.0));
        let r = check_report(path, &ok);
        assert_eq!(r["ok"], true);
        assert!(r["warnings"][0].as_str().unwrap().starts_with("hostname:"), "{r}");
    }
}
