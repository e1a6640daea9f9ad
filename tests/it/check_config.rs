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
