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
        let limit = first_limit(line);
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

/// Where a line over 998 octets is first cut. DATA doubles a leading dot, so such a line is
/// cut one octet earlier there; BDAT cuts it at the same place, so the next hop stores the
/// same text either way, and a DKIM signature made at intake over `LineFolder`'s output holds
/// for both.
fn first_limit(line: &[u8]) -> usize {
    MAX_LINE - usize::from(line.first() == Some(&b'.'))
}

/// The message as the next hop will store it, made from pieces as they come: lines over 998
/// octets folded exactly as `dot_stuff` and `last_chunk` fold them, a CRLF added at the end
/// when missing; no dots doubled. What DKIM signs, so that delivery's folding does not break
/// the signature. Holds at most one line's first 1,000 octets between pieces.
#[derive(Default)]
pub struct LineFolder {
    /// The unfinished line's bytes not yet written (fewer than its cut limit + 2).
    line: Vec<u8>,
    /// The cut limit of the unfinished line's next piece; `None` before its first byte.
    limit: Option<usize>,
    /// The last two octets pushed, to tell whether the message ends with CRLF.
    last: [u8; 2],
    pushed: bool,
}

impl LineFolder {
    /// Appends the folded form of `bytes` to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        if let Some(&b) = bytes.last() {
            self.last = [if bytes.len() > 1 { bytes[bytes.len() - 2] } else { self.last[1] }, b];
            self.pushed = true;
        }
        while !bytes.is_empty() {
            let (piece, complete) = match memchr::memchr(b'\n', bytes) {
                Some(i) => (&bytes[..=i], true),
                None => (bytes, false),
            };
            bytes = &bytes[piece.len()..];
            if complete && self.limit.is_none() {
                // A whole line in one piece, the common case: as `write_body` does it.
                let content = piece.strip_suffix(b"\r\n").unwrap_or(piece);
                let limit = first_limit(piece);
                if content.len() > limit {
                    fold_line(content, limit, out);
                    out.extend_from_slice(&piece[content.len()..]);
                } else {
                    out.extend_from_slice(piece);
                }
                continue;
            }
            let limit = *self.limit.get_or_insert_with(|| first_limit(piece));
            self.line.extend_from_slice(piece);
            if complete {
                let content = self.line.strip_suffix(b"\r\n").unwrap_or(&self.line);
                fold_line(content, limit, out);
                out.extend_from_slice(&self.line[content.len()..]);
                self.line.clear();
                self.limit = None;
            } else {
                self.cut_what_is_certain(out);
            }
        }
    }

    /// Ends the message (the unfinished line as it is, then CRLF if it did not end with one).
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if let Some(limit) = self.limit {
            fold_line(&self.line, limit, out);
            self.line.clear();
        }
        if self.pushed && self.last != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Cuts the unfinished line where its end cannot change the cut: with `limit + 2` octets
    /// and no LF yet, its content (without a CRLF still to come) is longer than `limit`.
    fn cut_what_is_certain(&mut self, out: &mut Vec<u8>) {
        let Some(mut limit) = self.limit else { return };
        let mut start = 0;
        while self.line.len() - start >= limit + 2 {
            let content = &self.line[start..];
            let mut cut = limit;
            while cut > limit - 3 && content[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            out.extend_from_slice(&content[..cut]);
            out.extend_from_slice(b"\r\n ");
            start += cut;
            limit = MAX_LINE - 1;
        }
        self.line.drain(..start);
        self.limit = Some(limit);
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
