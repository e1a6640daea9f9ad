//! A client nobody on this team wrote (lettre) hands Sluice a message.

use lettre::message::Mailbox;
use lettre::{Message, SmtpTransport, Transport};

use crate::common::TestRelay;

#[test]
fn lettre_submits_and_the_message_is_spooled_with_trace_fields() {
    let relay = TestRelay::start();
    let transport = SmtpTransport::builder_dangerous("127.0.0.1").port(relay.addr.port()).build();
    let email = Message::builder()
        .from("Alice <alice@sender.test>".parse::<Mailbox>().unwrap())
        .to("bob@dest.test".parse::<Mailbox>().unwrap())
        .subject("lettre interop")
        .body(String::from("Hello from lettre\r\n"))
        .unwrap();
    let response = transport.send(&email).expect("lettre got a 2xx");
    let text: String = response.message().collect::<Vec<_>>().join(" ");
    assert!(text.starts_with("2.0.0 OK queued as "), "{text}");
    let queue_id = text.rsplit(' ').next().unwrap().to_string();

    let stored = relay.stop_and_read();
    assert_eq!(stored.len(), 1);
    let (env, body) = &stored[0];
    assert_eq!(env.queue_id, queue_id);
    assert_eq!(env.from.as_ref().unwrap().to_string(), "alice@sender.test");
    assert!(body.starts_with("Received: from "), "{body}");
    assert!(body.contains(&format!("by relay.test (Sluice) with ESMTP id {queue_id}\r\n\tfor <bob@dest.test>; ")), "{body}");
    assert!(body.contains("Subject: lettre interop\r\n"));
    assert!(body.contains("Hello from lettre\r\n"));
    // lettre sets Date but not Message-ID: Sluice adds exactly the missing one.
    assert_eq!(body.matches("\r\nDate: ").count(), 1, "{body}");
    assert!(body.contains(&format!("Message-ID: <{queue_id}@relay.test>")), "{body}");
}
