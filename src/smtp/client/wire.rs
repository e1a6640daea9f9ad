//! The client's wire forms: MAIL and RCPT command lines with the parameters the next hop
//! offers, and the body with its dots doubled and over-long lines broken.

use super::{Capabilities, Message};
use crate::smtp::address::{Mailbox, RcptParams, Ret};

fn path(m: Option<&Mailbox>) -> String {
    m.map(|m| format!("<{m}>")).unwrap_or_else(|| "<>".into())
}

pub(super) fn mail_command(msg: &Message, caps: &Capabilities) -> String {
    let mut line = format!("MAIL FROM:{}", path(msg.from.as_ref()));
    if caps.size.is_some() {
        line.push_str(&format!(" SIZE={}", msg.body.len()));
    }
    if caps.eightbitmime && msg.is_8bit() {
        line.push_str(" BODY=8BITMIME");
    }
    if caps.smtputf8 && msg.needs_smtputf8() {
        line.push_str(" SMTPUTF8");
    }
    if caps.dsn {
        match msg.params.ret {
            Some(Ret::Full) => line.push_str(" RET=FULL"),
            Some(Ret::Hdrs) => line.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &msg.params.envid {
            line.push_str(&format!(" ENVID={envid}"));
        }
    }
    if msg.params.requiretls {
        line.push_str(" REQUIRETLS");
    }
    // RFC 6710 4.1: a relay passes the priority on to a next hop that supports it.
    if let (true, Some(p)) = (caps.mt_priority, msg.params.priority) {
        line.push_str(&format!(" MT-PRIORITY={p}"));
    }
    line
}

pub(super) fn rcpt_command((mailbox, params): &(Mailbox, RcptParams), caps: &Capabilities) -> String {
    let mut line = format!("RCPT TO:<{mailbox}>");
    if caps.dsn {
        if let Some(n) = params.notify {
            let words: Vec<&str> = if n.never {
                vec!["NEVER"]
            } else {
                [(n.success, "SUCCESS"), (n.failure, "FAILURE"), (n.delay, "DELAY")]
                    .into_iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, w)| w)
                    .collect()
            };
            line.push_str(&format!(" NOTIFY={}", words.join(",")));
        }
        if let Some(orcpt) = &params.orcpt {
            line.push_str(&format!(" ORCPT={orcpt}"));
        }
    }
    // Without RRVS at the next hop, recipients that need the check never get here (see
    // `delivery::attempt`); those with ";C" go on without it.
    if let (true, Some(rrvs)) = (caps.rrvs, &params.rrvs) {
        line.push_str(&format!(" RRVS={rrvs}"));
    }
    line
}

/// The longest line sent, without CRLF (RFC 5321 4.5.3.1.6).
pub(super) const MAX_LINE: usize = 998;

/// Appends the body with a dot doubled at the start of each line (RFC 5321 4.5.2); the body
/// is made to end with CRLF so the final dot stands on its own line. Lines over 998 octets
/// (accepted when `limits.max_line_length` is raised) are broken by inserting CRLF SP, as
/// Postfix does: a header line becomes a folded one, and MIME structure survives.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    write_body(body, true, out);
}

/// Appends `BDAT <size> LAST` and the body as one chunk (RFC 3030): no dots doubled, lines
/// over 998 octets broken as for DATA, ending with CRLF.
pub fn last_chunk(body: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    write_body(body, false, out);
    let line = format!("BDAT {} LAST\r\n", out.len() - start);
    out.splice(start..start, line.into_bytes());
}

fn write_body(body: &[u8], double_dots: bool, out: &mut Vec<u8>) {
    out.reserve(body.len() + 2);
    // Most lines need no change: they are copied in runs, with only line ends searched for
    // (memchr), instead of line by line.
    let (mut run_start, mut line_start) = (0, 0);
    while line_start < body.len() {
        let line_end = memchr::memchr(b'\n', &body[line_start..]).map_or(body.len(), |i| line_start + i + 1);
        let line = &body[line_start..line_end];
        let content = line.strip_suffix(b"\r\n").unwrap_or(line);
        let doubled = double_dots && line[0] == b'.';
        let limit = MAX_LINE - usize::from(doubled);
        if doubled || content.len() > limit {
            out.extend_from_slice(&body[run_start..line_start]);
            if doubled {
                out.push(b'.');
            }
            if content.len() <= limit {
                out.extend_from_slice(line);
            } else {
                fold_line(content, limit, out);
                out.extend_from_slice(&line[content.len()..]);
            }
            run_start = line_end;
        }
        line_start = line_end;
    }
    out.extend_from_slice(&body[run_start..]);
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes `content` as lines of at most `first` octets, then `MAX_LINE` counting the leading
/// space, never cutting a UTF-8 sequence apart.
pub(super) fn fold_line(mut content: &[u8], first: usize, out: &mut Vec<u8>) {
    let mut limit = first;
    while content.len() > limit {
        let mut cut = limit;
        while cut > limit - 3 && content[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        out.extend_from_slice(&content[..cut]);
        out.extend_from_slice(b"\r\n ");
        content = &content[cut..];
        limit = MAX_LINE - 1;
    }
    out.extend_from_slice(content);
}
