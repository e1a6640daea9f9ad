//! `sluice check-config` accepts the example, names key and line for bad configs, and warns
//! about what is allowed but probably wrong.

use crate::common::sluice;

#[test]
fn the_example_config_passes() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    let (ok, out, err) = sluice(&["check-config", "--config", example]);
    assert!(ok, "{err}");
    assert!(out.contains("OK"));
}

#[test]
fn bad_configs_fail_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("hostname: a.test\nlimits:\n  max_hops: many\n", "limits.max_hops", "line 3"),
        ("hostname: a.test\nlisten: []\n", "unknown field `listen`", "line 2"),
        ("hostname: a.test\ntrusted_networks:\n  - 10.0.0.0/40\n", "trusted_networks: invalid prefix length", "line 3"),
        ("hostname: a.test\nadmin:\n  group: no-such-group-here\n", "admin.group: no group \"no-such-group-here\"", "line 3"),
        (
            "hostname: a.test\nlimits:\n  max_connections: 50\n  reserved_for_trusted: 50\n",
            "reserved_for_trusted: 50 leaves no connection",
            "line 4",
        ),
        ("hostname: a.test\ntrusted_networks: [\"0.0.0.0/0\"]\n", "trusted_networks: 0.0.0.0/0 lets anyone relay", "line 2"),
        (
            "hostname: a.test\ndelivery:\n  smarthost: \"smtp.example.com:465\"\n",
            "smarthost: smtp.example.com:465 is implicit TLS",
            "line 3",
        ),
        (
            "hostname: a.test\ndelivery:\n  dane:\n    enabled: true\n    trust_anchors: /nonexistent/anchors\n",
            "delivery.dane.trust_anchors: /nonexistent/anchors",
            "line 5",
        ),
        ("hostname: a.test\ncluster:\n  redis: { url: \"http://x\" }\n", "cluster.redis.url", "line 3"),
        ("hostname: a.test\ncluster:\n  nodes: 0\n", "cluster.nodes: must be at least 1", "line 3"),
        (
            "hostname: a.test\ncluster:\n  redis:\n    url: \"redis://127.0.0.1\"\n    ca_file: /etc/hostname\n",
            "cluster.redis.ca_file: only for rediss:// URLs",
            "line 5",
        ),
        (
            "hostname: a.test\ncluster:\n  redis:\n    url: \"rediss://127.0.0.1\"\n    ca_file: /etc/hostname\n",
            "cluster.redis.ca_file: /etc/hostname: no PEM certificate",
            "line 5",
        ),
        (
            "hostname: a.test\ncluster:\n  redis:\n    url: [\"rediss://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n",
            "cluster.redis.url: a cluster's nodes are all rediss:// or all redis://",
            "line 4",
        ),
        ("hostname: a.test\ncluster:\n  lease_ttl: 1s\n", "cluster.lease_ttl: must be at least 3s", "line 3"),
    ];
    for (text, key, line) in cases {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, text).unwrap();
        let (ok, _, err) = sluice(&["check-config", "--config", path.to_str().unwrap()]);
        assert!(!ok, "{text} should fail");
        assert!(err.contains(key) && err.contains(line), "{text:?}: {err}");
    }
    let (ok, _, err) = sluice(&["check-config", "--config", "/nonexistent/sluice.yaml"]);
    assert!(!ok && err.contains("/nonexistent/sluice.yaml"), "{err}");
}

#[test]
fn a_hostname_that_is_not_fully_qualified_passes_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.yaml");
    std::fs::write(&path, "# the box's own name\nhostname: vm\n").unwrap();
    let (ok, out, err) = sluice(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(ok && out.contains("OK"), "{err}");
    assert!(err.contains("warning: hostname: \"vm\" at line 2 is not a fully qualified domain name"), "{err}");
    std::fs::write(&path, "hostname: relay.example.com\n").unwrap();
    let (ok, _, err) = sluice(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(ok && !err.contains("warning"), "{err}");
}

#[test]
fn config_show_prints_what_parses_back_and_changed_only_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    let (ok, shown, err) = sluice(&["config", "show", "--config", example]);
    assert!(ok, "{err}");
    assert!(shown.contains("max_hops: 100") && shown.contains("commit_window: 2ms"), "every key, defaults too:\n{shown}");
    // What it printed is a config of its own, equal to the one it came from.
    let again = dir.path().join("shown.yaml");
    std::fs::write(&again, &shown).unwrap(); // its paths are absolute already
    let (ok, reshown, err) = sluice(&["config", "show", "--config", again.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(reshown.lines().count(), shown.lines().count());

    let small = dir.path().join("small.yaml");
    std::fs::write(&small, "hostname: relay.example.net\nlimits:\n  max_hops: 30 # fewer\ndelivery: { retry: [5min, 1h30m] }\n").unwrap();
    let (ok, changed, err) = sluice(&["config", "show", "--changed", "--config", small.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(changed, "delivery:\n  retry:\n  - 5min\n  - 1h30min\nhostname: relay.example.net\nlimits:\n  max_hops: 30\n");
    let (ok, defaults, _) = sluice(&["config", "show", "--defaults", "--config", "/nonexistent.yaml"]);
    assert!(ok && defaults.contains("max_hops: 100") && defaults.contains("accounting:"), "{defaults}");
}

#[test]
fn check_config_json_gives_key_and_line_apart() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "hostname: a.test\n# max_failures: 5\nauth:\n  max_failures: 0\n").unwrap();
    let (code, out, _) = crate::common::sluice_status(&["check-config", "--json", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((r["ok"].as_bool(), r["key"].as_str(), r["line"].as_u64()), (Some(false), Some("auth.max_failures"), Some(4)), "{r}");
    let warned = dir.path().join("warned.yaml");
    std::fs::write(&warned, "hostname: vm\n").unwrap();
    let (code, out, _) = crate::common::sluice_status(&["check-config", "--json", "--config", warned.to_str().unwrap()]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((code, r["ok"].as_bool()), (0, Some(true)));
    assert!(r["warnings"][0].as_str().unwrap().contains("not a fully qualified"), "{r}");
}
