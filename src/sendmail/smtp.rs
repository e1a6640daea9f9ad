//! `sendmail -bs`: SMTP on stdin and stdout (what some MUAs and scripts speak), by the same
//! sans-IO session the listeners use; each message goes to the daemon like any other.

use std::io::{Read, Write};
use std::sync::Arc;

use super::{EX_OK, EX_SOFTWARE, Request, Response, submit};
use crate::config::Config;
use crate::smtp::reply::{Enhanced, Reply};
use crate::smtp::server::{ClientInfo, Event, Session};

pub fn run(config: &Config) -> u8 {
    let cfg = Arc::new(crate::intake::plain_session_config(config));
    // The local user may send anywhere; the daemon applies the return-path rules.
    let client =
        ClientInfo { ip: std::net::Ipv4Addr::LOCALHOST.into(), relay_allowed: true, plaintext_auth: false, tls: None, tls_required: false };
    let mut session = Session::new(cfg, client);
    let (mut stdin, mut stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut out = Vec::new();
    session.greeting(&mut out);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if stdout.write_all(&out).and_then(|_| stdout.flush()).is_err() {
            return EX_SOFTWARE;
        }
        out.clear();
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return EX_OK,
            Ok(n) => n,
        };
        session.feed(&buf[..n]);
        loop {
            match session.poll(&mut out) {
                Event::NeedInput => break,
                Event::Close => {
                    let _ = stdout.write_all(&out).and_then(|_| stdout.flush());
                    return EX_OK;
                }
                Event::Message(tx) => {
                    let request = Request {
                        from: Some(tx.from.as_ref().map(|m| m.to_string()).unwrap_or_default()),
                        full_name: None,
                        extract: false,
                        recipients: tx.recipients.iter().map(|r| r.mailbox.to_string()).collect(),
                        size: tx.body.len(),
                    };
                    let result = match submit(&config.sendmail.socket, &config.sendmail.maildrop, &request, &tx.body) {
                        Response::Queued(id) => Ok(id),
                        Response::Refused { exit, text } => {
                            let code = if exit == super::EX_TEMPFAIL || exit == super::EX_UNAVAILABLE { 451 } else { 554 };
                            let class = (code / 100) as u8;
                            Err(Reply::new(code, Enhanced(class, 3, 0), text))
                        }
                    };
                    session.message_stored(result.as_deref().map_err(Clone::clone), &mut out);
                }
                // Never offered here.
                Event::StartTls | Event::Authenticate(_) | Event::CheckRecipient(_) => return EX_SOFTWARE,
            }
        }
    }
}
