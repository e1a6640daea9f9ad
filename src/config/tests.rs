//! Config parsing, defaults and error messages.

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("/etc/sluice")).map_err(|e| e.0)
}

#[test]
fn empty_config_gets_documented_defaults() {
    let c = parse("hostname: relay.example.net\n").unwrap();
    assert_eq!(c.limits.max_message_size, 52428800);
    assert_eq!(c.limits.max_recipients, 1000);
    assert_eq!(c.limits.max_hops, 100);
    assert_eq!(c.listeners[0].address, "127.0.0.1:25".parse().unwrap());
    assert_eq!(c.postmaster().to_string(), "postmaster@relay.example.net");
    assert!(c.is_trusted("127.0.0.1".parse().unwrap()));
    assert!(!c.is_trusted("127.0.0.2".parse().unwrap()));
}

#[test]
fn the_example_config_is_valid() {
    let text = include_str!("../../config.example.yaml");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = Config::parse(text, repo).unwrap();
    assert_eq!(c.spool.path, repo.join("./var/spool"));
}

#[test]
fn errors_name_the_key_and_line_table() {
    let table = [
        ("hostname: a.b\nbogus: 1\n", "unknown field `bogus`", "line 2"),
        ("hostname: a.b\nlimits:\n  max_hops: -1\n", "limits.max_hops", "line 3"),
        ("hostname: a.b\nlimits: { max_recipients: lots }\n", "limits.max_recipients", "line 2"),
        ("hostname: a.b\ntrusted_networks: [\"10.0.0.0/33\"]\n", "trusted_networks: invalid prefix", "line 2"),
        ("hostname: a.b\nlisteners:\n  - { address: \"127.0.0.1\" }\n", "listeners[0]", "line 3"),
        ("hostname: a.b\nlisteners:\n  - { address: \"127.0.0.1:25\", mode: smtps }\n", "unknown variant `smtps`", "line 3"),
        (
            "hostname: a.b\nlisteners:\n  - { address: \"127.0.0.1:25\", mode: submission }\n",
            "listeners[0].mode: submission and submissions listeners need a tls section",
            "line 3",
        ),
        (
            "hostname: a.b\ndkim:\n  sign:\n    - { domain: x.test, selector: s1, key: /nonexistent/k.pem }\n",
            "dkim.sign[0].key: cannot read /nonexistent/k.pem",
            "line 4",
        ),
        (
            "hostname: a.b\ndkim:\n  sign:\n    - domain: x.test\n      selector: \"s 1\"\n      key: /nonexistent/k.pem\n",
            "dkim.sign[0].selector: \"s 1\" is not a selector",
            "line 5",
        ),
        ("hostname: a.b\ndkim:\n  sign:\n    - { domain: \"*x.test\", selector: s, key: k }\n", "dkim.sign[0].domain", "line 4"),
        ("hostname: a.b\ndkim:\n  headers: [From, \"Sub ject\"]\n", "dkim.headers: \"Sub ject\" is not a header field name", "line 3"),
        (
            "hostname: a.b\ntls:\n  certificate: /nonexistent/c.pem\n  private_key: /nonexistent/k.pem\n",
            "tls.certificate: file /nonexistent/c.pem does not exist",
            "line 3",
        ),
        ("hostname: a.b\nauth:\n  users_file: /nonexistent/users\n", "auth.users_file: file /nonexistent/users does not exist", "line 3"),
        ("hostname: a.b\ndelivery:\n  smarthost: \"[bad host]:25\"\n", "delivery.smarthost: invalid next hop", "line 3"),
        ("hostname: a.b\ndelivery:\n  ehlo_name: localhost\n", "delivery.ehlo_name: \"localhost\" is not a fully qualified", "line 3"),
        ("hostname: a.b\ndelivery:\n  retry: []\n", "delivery.retry: needs at least one interval", "line 3"),
        ("hostname: a.b\ndelivery:\n  ip_family: ipv5\n", "delivery.ip_family: unknown variant", "line 3"),
        ("hostname: a.b\nlisteners: []\n", "listeners: at least one", "line 2"),
        ("hostname: a.b\ndelivery:\n  message_rate: 10 per second\n", "delivery.message_rate: \"10 per second\" is not a rate", "line 3"),
        (
            "hostname: a.b\ndelivery:\n  destinations:\n    - { message_rate: \"5/s\" }\n",
            "delivery.destinations[0]: a destination needs domains",
            "line 4",
        ),
        ("hostname: a.b\ndelivery:\n  destinations:\n    - { mx: [\"google.*\"] }\n", "is not a domain or *.domain pattern", "line 4"),
        ("hostname: a.b\ndelivery:\n  backoff: { initial: 1h, max: 1m }\n", "delivery.backoff: initial must be positive", "line 3"),
        ("hostname: \"bad name\"\n", "hostname: invalid host name", "line 1"),
        ("hostname: a.b\npostmaster: nobody\n", "postmaster: invalid address", "line 2"),
        ("hostname: a.b\nlimits:\n  command_timeout: 5 fortnights\n", "limits.command_timeout", "line 3"),
        ("hostname: a.b\nlimits:\n  max_line_length: 80\n", "limits.max_line_length: must be at least 998", "line 3"),
        (
            "hostname: a.b\nlisteners:\n  - { address: \"127.0.0.1:25\" }\n  - { address: \"127.0.0.1:25\" }\n",
            "listeners[1].address: address 127.0.0.1:25 is listed twice",
            "line 4",
        ),
        ("hostname: a.b\ntrusted_networks: [\"10.0.0.0/8\", \"0.0.0.0/0\"]\n", "trusted_networks: 0.0.0.0/0 lets anyone relay", "line 2"),
        ("hostname: a.b\ntrusted_networks: [\"::/0\"]\n", "trusted_networks: ::/0 lets anyone relay", "line 2"),
        (
            "hostname: a.b\ndelivery:\n  smarthost: \"mail.example.com:465\"\n",
            "delivery.smarthost: mail.example.com:465 is implicit TLS (submissions): set delivery.smarthost_tls: implicit",
            "line 3",
        ),
        (
            "hostname: a.b\ndelivery:\n  routes:\n    x.test: \"[10.0.0.1]:465\"\n",
            "delivery.routes: 10.0.0.1:465 is implicit TLS",
            "line 3",
        ),
        // A comment naming the key is never the line given; the key under its own section is.
        (
            "hostname: a.b\n# users_file: /etc/sluice/users (commented out)\nauth:\n  # max_failures: 5\n  max_failures: 0\n",
            "auth.max_failures: must be at least 1",
            "line 5",
        ),
        (
            "hostname: a.b\nlisteners:\n  - { address: \"127.0.0.1:25\" }\n  - address: \"127.0.0.1:26\"\n    default_priority: 12\n",
            "listeners[1].default_priority: must be between -9 and 9",
            "line 5",
        ),
        ("hostname: a.b\nadmin: { socket: /run/s.sock, group: no-such-group-here }\n", "admin.group: no group", "line 2"),
        ("hostname: a.b\nspool:\n  segment_size: 10\n", "spool.segment_size: must be between", "line 3"),
        ("hostname: a.b\ndelivery:\n  max_connections: 0\n", "delivery.max_connections: must be positive", "line 3"),
        ("hostname: a.b\nlimits: { max_errors: 0 }\n", "limits.max_errors: must be positive", "line 2"),
        ("hostname: a.b\naccounting:\n  path: /tmp/a.jsonl\n  max_size: 1000\n", "accounting.max_size: must be at least", "line 4"),
        (
            "hostname: a.b\ndelivery:\n  destinations:\n    - { name: other, domains: [\"a.test\"] }\n",
            "delivery.destinations[0].name: \"other\" is reserved",
            "line 4",
        ),
    ];
    for (text, key, line) in table {
        let e = parse(text).expect_err(text);
        assert!(e.contains(key) && e.contains(line), "{text:?} gave {e:?}");
    }
}

#[test]
fn implicit_tls_makes_a_smarthost_on_465_valid_but_not_a_route() {
    let c = parse("hostname: a.b\ndelivery:\n  smarthost: \"mail.example.com:465\"\n  smarthost_tls: implicit\n").unwrap();
    assert_eq!(c.delivery.smarthost_tls, SmarthostTls::Implicit);
    let e = parse("hostname: a.b\ndelivery:\n  smarthost_tls: implicit\n  routes: { x.test: \"[10.0.0.1]:465\" }\n").unwrap_err();
    assert!(e.starts_with("delivery.routes: 10.0.0.1:465 is implicit TLS") && e.contains("line 4"), "{e}");
    assert!(parse("hostname: a.b\ndelivery: { smarthost_tls: tls }\n").unwrap_err().contains("delivery.smarthost_tls: unknown variant"));
}

#[test]
fn next_hops_parse() {
    let h: NextHop = "[mail.example.net]:2525".parse().unwrap();
    assert_eq!(h, NextHop { host: "mail.example.net".into(), port: 2525, no_mx: true });
    assert_eq!("relay.example.net".parse::<NextHop>().unwrap(), NextHop { host: "relay.example.net".into(), port: 25, no_mx: false });
    assert_eq!("[192.0.2.7]".parse::<NextHop>().unwrap(), NextHop { host: "192.0.2.7".into(), port: 25, no_mx: true });
    assert!("[x]:0".parse::<NextHop>().is_err());
    assert!("host:port".parse::<NextHop>().is_err());
}

#[test]
fn starttls_policy_most_specific_network_wins() {
    let c = parse("hostname: a.b\ntls: { certificate: /c.pem, private_key: /k.pem, self_signed_if_missing: true }\nstarttls_policy:\n  require_tls: [\"10.0.0.0/8\"]\n  allow_plaintext: [\"10.1.2.3/32\"]\n").unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(c.tls_required(ip("10.9.9.9"), ListenerMode::Relay));
    assert!(!c.tls_required(ip("10.1.2.3"), ListenerMode::Relay), "the scanner");
    assert!(!c.tls_required(ip("192.0.2.1"), ListenerMode::Relay), "unlisted, relay");
    assert!(c.tls_required(ip("192.0.2.1"), ListenerMode::Submission), "unlisted, submission");
    assert!(!c.tls_required(ip("127.0.0.1"), ListenerMode::Submission), "loopback");
    assert!(parse("hostname: a.b\nstarttls_policy: { require_tls: [\"10.0.0.0/8\"] }\n").is_err(), "needs tls");
}

#[test]
fn cidr_matching() {
    let net: Cidr = "192.168.1.0/24".parse().unwrap();
    assert!(net.contains("192.168.1.77".parse().unwrap()));
    assert!(!net.contains("192.168.2.1".parse().unwrap()));
    assert!(net.contains("::ffff:192.168.1.5".parse().unwrap()));
    let v6: Cidr = "2001:db8::/33".parse().unwrap();
    assert!(v6.contains("2001:db8:7fff::1".parse().unwrap()));
    assert!(!v6.contains("2001:db8:8000::1".parse().unwrap()));
    assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
}

#[test]
fn an_open_relay_needs_saying_so_and_a_short_hostname_is_a_warning() {
    let open = parse("hostname: relay.example.com\ntrusted_networks: [\"0.0.0.0/0\"]\nallow_open_relay: true\n").unwrap();
    assert!(open.is_trusted("192.0.2.1".parse().unwrap()));
    assert!(open.warnings.is_empty(), "{:?}", open.warnings);
    let short = parse("hostname: vm\n").unwrap();
    assert_eq!(short.warnings.len(), 1);
    assert!(short.warnings[0].starts_with("hostname: \"vm\" at line 1 is not a fully qualified domain name"), "{:?}", short.warnings);
}

#[test]
fn durations_parse_and_refuse_nonsense() {
    assert_eq!("5m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(300));
    assert_eq!("90".parse::<HumanDuration>().unwrap().0, Duration::from_secs(90));
    assert_eq!("250ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(250));
    assert_eq!("5min".parse::<HumanDuration>().unwrap().0, Duration::from_secs(300));
    assert_eq!("1h30m".parse::<HumanDuration>().unwrap().0, Duration::from_secs(5400));
    assert_eq!("2 hours 5 s".parse::<HumanDuration>().unwrap().0, Duration::from_secs(7205));
    assert_eq!("1d12h".parse::<HumanDuration>().unwrap().0, Duration::from_secs(129_600));
    assert_eq!("5 weeks".parse::<HumanDuration>().unwrap().0, Duration::from_secs(35 * 86_400));
    assert_eq!("1s500ms".parse::<HumanDuration>().unwrap().0, Duration::from_millis(1500));
    for bad in ["", "m", "5 fortnights", "1h30", "h1", "-5s", "1.5h"] {
        assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?}");
    }
    // Found by the config fuzz target: a huge count overflowed the multiplication.
    for huge in ["888888888888888885m", "99999999999999999999", "18446744073709551615s", "11 years", "3660d"] {
        let e = huge.parse::<HumanDuration>().unwrap_err();
        assert!(e.contains("too long") || e.contains("invalid"), "{huge}: {e}");
    }
    assert!(crate::config::Config::parse("limits: { data_timeout: 999999999999 }\n", std::path::Path::new("/")).is_err());
}
