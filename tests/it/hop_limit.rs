//! Loop detection: max_hops Received fields or more get 554 5.4.6.

use crate::common::TestRelay;

fn with_received(n: usize) -> String {
    let mut body: String =
        (0..n).map(|i| format!("Received: from hop{i}.test by hop{}.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n", i + 1)).collect();
    body.push_str("Subject: loop\r\n\r\nbody\r\n");
    body
}

#[test]
fn messages_at_the_hop_limit_are_refused() {
    let relay = TestRelay::with_config("limits: { max_hops: 5 }\n");
    let mut c = relay.client();
    let r = c.send_mail("a@x.test", &["b@y.test"], &with_received(5));
    assert_eq!((r.code, r.text()), (554, "5.4.6 Too many hops (mail loop?)".into()));
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], &with_received(4)).code, 250);
    assert_eq!(relay.stop_and_read().len(), 1);
}
