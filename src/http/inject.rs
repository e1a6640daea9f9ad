//! `POST /api/v1/messages`: the request, checked field by field, made into the messages to
//! accept. Either a raw RFC 5322 message with its envelope, or a structured one built into MIME
//! (mail-builder), with per-recipient `{{name}}` substitutions giving one message each. Pure:
//! JSON in, messages (or the problem, naming its field) out.

// A refusal is the rare path, made at most once per request: its size costs nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use base64::Engine;
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::text::Text;
use serde::Deserialize;

use super::problem::Problem;
use crate::smtp::address::{self, Body, MailParams, Mailbox, Notify, RcptParams, Ret};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// For `raw`, required: the envelope. For a structured message, `from` may set the return
    /// path (default: the From address).
    #[serde(default)]
    pub envelope: Option<EnvelopeRequest>,
    /// A whole RFC 5322 message (LF or CRLF line ends).
    #[serde(default)]
    pub raw: Option<String>,
    #[serde(default)]
    pub from: Option<AddressField>,
    #[serde(default)]
    pub to: Vec<AddressField>,
    #[serde(default)]
    pub cc: Vec<AddressField>,
    #[serde(default)]
    pub bcc: Vec<AddressField>,
    #[serde(default)]
    pub reply_to: Option<AddressField>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// Extra header fields (not the ones the builder writes).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Recipient address (of `to`) -> values for `{{name}}` in subject, text and html: one
    /// message per `to` recipient, addressed to that recipient alone.
    #[serde(default)]
    pub substitutions: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub dsn: Option<DsnRequest>,
    /// MT-PRIORITY (RFC 6710), -9 to 9.
    #[serde(default)]
    pub priority: Option<i8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeRequest {
    /// The return path; `""` for the null sender.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AddressField {
    /// `a@b.example` or `Name <a@b.example>`.
    Text(String),
    Named(NamedAddress),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedAddress {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub filename: String,
    #[serde(default)]
    pub content_type: Option<String>,
    /// The content, base64.
    pub content: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DsnRequest {
    /// `full` or `hdrs`.
    #[serde(default)]
    pub ret: Option<String>,
    #[serde(default)]
    pub envid: Option<String>,
    /// `never`, or any of `success`, `failure`, `delay`.
    #[serde(default)]
    pub notify: Option<Vec<String>>,
}

/// One message to hand to the accept path.
#[derive(Debug)]
pub struct Prepared {
    pub from: Option<Mailbox>,
    pub params: MailParams,
    pub recipients: Vec<(Mailbox, RcptParams)>,
    /// The message, CRLF line ends.
    pub message: Vec<u8>,
}

/// What a request may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_recipients: usize,
    pub max_message_size: u64,
    /// What all messages of one request may come to (api.max_request_size).
    pub max_total: u64,
    /// Recipients of one message at most (limits.max_recipients, as for SMTP).
    pub max_recipients_per_message: usize,
    /// The longest line of a raw message, without CRLF (limits.max_line_length, as for SMTP).
    pub max_line: usize,
    /// For the Message-IDs of built messages.
    pub hostname: String,
}

/// Header fields the builder writes (or the accept path adds): not settable in `headers`.
const RESERVED: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "received",
    "return-path",
    "dkim-signature",
    "sender",
];

/// Checks the request and makes its messages.
pub fn prepare(req: MessageRequest, limits: &Limits) -> Result<Vec<Prepared>, Problem> {
    let mut params = MailParams::default();
    let mut notify = None;
    if let Some(dsn) = &req.dsn {
        params.ret = match dsn.ret.as_deref() {
            None => None,
            Some("full") => Some(Ret::Full),
            Some("hdrs") => Some(Ret::Hdrs),
            Some(_) => return Err(Problem::invalid("/dsn/ret", "full or hdrs")),
        };
        if let Some(envid) = &dsn.envid {
            if envid.is_empty() || envid.len() > 100 || !envid.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(Problem::invalid("/dsn/envid", "1 to 100 printable ASCII characters"));
            }
            params.envid = Some(xtext(envid));
        }
        if let Some(list) = &dsn.notify {
            let mut n = Notify::default();
            for (i, word) in list.iter().enumerate() {
                match word.as_str() {
                    "never" => n.never = true,
                    "success" => n.success = true,
                    "failure" => n.failure = true,
                    "delay" => n.delay = true,
                    _ => return Err(Problem::invalid(format!("/dsn/notify/{i}"), "never, success, failure or delay")),
                }
            }
            if list.is_empty() || (n.never && list.len() > 1) {
                return Err(Problem::invalid("/dsn/notify", "never alone, or some of success, failure, delay"));
            }
            notify = Some(n);
        }
    }
    if let Some(p) = req.priority {
        if !(-9..=9).contains(&p) {
            return Err(Problem::invalid("/priority", "between -9 and 9 (RFC 6710)"));
        }
        params.priority = Some(p);
    }
    let rcpt_params = RcptParams { notify, ..RcptParams::default() };
    let messages = match req.raw {
        Some(_) => raw(req, params, rcpt_params, limits)?,
        None => structured(req, params, rcpt_params, limits)?,
    };
    for (i, m) in messages.iter().enumerate() {
        if m.message.len() as u64 > limits.max_message_size {
            let detail =
                format!("message {i} is {} octets; the limit is {} (limits.max_message_size)", m.message.len(), limits.max_message_size);
            return Err(Problem::new(413, "too-large", "The message is too large").detail(detail));
        }
    }
    Ok(messages)
}

fn raw(req: MessageRequest, params: MailParams, rcpt: RcptParams, limits: &Limits) -> Result<Vec<Prepared>, Problem> {
    let structured_fields = [
        ("/from", req.from.is_some()),
        ("/to", !req.to.is_empty()),
        ("/cc", !req.cc.is_empty()),
        ("/bcc", !req.bcc.is_empty()),
        ("/subject", req.subject.is_some()),
        ("/text", req.text.is_some()),
        ("/html", req.html.is_some()),
        ("/attachments", !req.attachments.is_empty()),
        ("/headers", !req.headers.is_empty()),
        ("/substitutions", !req.substitutions.is_empty()),
        ("/reply_to", req.reply_to.is_some()),
    ];
    if let Some((pointer, _)) = structured_fields.iter().find(|(_, set)| *set) {
        return Err(Problem::invalid(*pointer, "a raw message takes only envelope, dsn and priority beside raw"));
    }
    let envelope = req.envelope.ok_or_else(|| Problem::invalid("/envelope", "a raw message needs its envelope (from, to)"))?;
    let from = match envelope.from.as_deref() {
        None => return Err(Problem::invalid("/envelope/from", "required (\"\" for the null sender)")),
        Some("") | Some("<>") => None,
        Some(f) => Some(mailbox(f, "/envelope/from")?),
    };
    if envelope.to.is_empty() {
        return Err(Problem::invalid("/envelope/to", "at least one recipient"));
    }
    if envelope.to.len() > limits.max_recipients.min(limits.max_recipients_per_message) {
        return Err(too_many(envelope.to.len(), limits));
    }
    let recipients = envelope
        .to
        .iter()
        .enumerate()
        .map(|(i, t)| Ok((mailbox(t, &format!("/envelope/to/{i}"))?, rcpt.clone())))
        .collect::<Result<Vec<_>, Problem>>()?;
    let message = crlf(req.raw.unwrap_or_default().as_bytes());
    let (fields, body_start) = crate::message::submission::header_fields(&message);
    if fields.is_empty() {
        return Err(Problem::invalid("/raw", "no header fields: a message starts with its header section"));
    }
    // The header section ends at an empty line (or the message's end); a body line straight
    // after the fields is split differently by different readers, a DKIM verifier among them.
    if body_start < message.len() && !message[body_start..].starts_with(b"\r\n") {
        return Err(Problem::invalid("/raw", "the header section must end with an empty line"));
    }
    // As SMTP's DATA refuses them: a longer line would be folded on the way out, which breaks
    // its signature and, in a header, its meaning.
    if let Some((number, length)) = longest_over(&message, limits.max_line) {
        return Err(Problem::invalid(
            "/raw",
            format!("line {number} is {length} octets; at most {} (limits.max_line_length)", limits.max_line),
        ));
    }
    Ok(vec![Prepared { from, params, recipients, message }.fixed()])
}

fn structured(req: MessageRequest, params: MailParams, rcpt: RcptParams, limits: &Limits) -> Result<Vec<Prepared>, Problem> {
    let from_field = req.from.as_ref().ok_or_else(|| Problem::invalid("/from", "required (or send raw)"))?;
    let from_header = named(from_field, "/from")?;
    let return_path = match req.envelope.as_ref().and_then(|e| e.from.as_deref()) {
        Some("") | Some("<>") => None,
        Some(f) => Some(mailbox(f, "/envelope/from")?),
        None => Some(from_header.1.clone()),
    };
    if req.envelope.as_ref().is_some_and(|e| !e.to.is_empty()) {
        return Err(Problem::invalid("/envelope/to", "a structured message's recipients are to, cc and bcc"));
    }
    let to = list(&req.to, "/to")?;
    let cc = list(&req.cc, "/cc")?;
    let bcc = list(&req.bcc, "/bcc")?;
    let count = to.len() + cc.len() + bcc.len();
    if count == 0 {
        return Err(Problem::invalid("/to", "at least one recipient in to, cc or bcc"));
    }
    if count > limits.max_recipients || (req.substitutions.is_empty() && count > limits.max_recipients_per_message) {
        return Err(too_many(count, limits));
    }
    let reply_to = req.reply_to.as_ref().map(|r| named(r, "/reply_to")).transpose()?;
    let subject = req.subject.clone().unwrap_or_default();
    if subject.contains(['\r', '\n']) {
        return Err(Problem::invalid("/subject", "one line: no CR or LF"));
    }
    if req.text.is_none() && req.html.is_none() && req.attachments.is_empty() {
        return Err(Problem::invalid("/text", "text, html or attachments are needed"));
    }
    for (name, value) in &req.headers {
        let pointer = format!("/headers/{}", pointer_escape(name));
        let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !valid_name || RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(Problem::invalid(pointer, "a header field name of your own (not one the message is built with)"));
        }
        if value.contains(['\r', '\n']) {
            return Err(Problem::invalid(pointer, "one line: no CR or LF"));
        }
    }
    let mut attachments = Vec::new();
    for (i, a) in req.attachments.iter().enumerate() {
        let content = base64::engine::general_purpose::STANDARD
            .decode(a.content.as_bytes())
            .map_err(|e| Problem::invalid(format!("/attachments/{i}/content"), format!("not base64: {e}")))?;
        if a.filename.is_empty() || a.filename.contains(['\r', '\n', '"', '/', '\\']) {
            return Err(Problem::invalid(format!("/attachments/{i}/filename"), "a file name without quotes, slashes or line breaks"));
        }
        let content_type = a.content_type.clone().unwrap_or_else(|| "application/octet-stream".into());
        let valid_type = content_type.split_once('/').is_some_and(|(t, s)| {
            let token = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
            token(t) && token(s)
        });
        if !valid_type {
            return Err(Problem::invalid(format!("/attachments/{i}/content_type"), "a MIME type, type/subtype"));
        }
        attachments.push((content_type, a.filename.clone(), content));
    }
    let templates: Vec<&str> = [Some(subject.as_str()), req.text.as_deref(), req.html.as_deref()].into_iter().flatten().collect();
    let variables = variables(&templates)?;
    // What the messages of one request may come to together: as much as a request may be, so
    // no request makes far more in memory than it brought (substitutions and attachments copy).
    let attachment_size: u64 = attachments.iter().map(|(_, _, c)| c.len() as u64 * 4 / 3 + 512).sum();
    let mut total = 0u64;
    let mut account = |filled: &[&Option<String>]| -> Result<(), Problem> {
        let size = filled.iter().map(|f| f.as_ref().map_or(0, |t| t.len() as u64)).sum::<u64>() + attachment_size + 2048;
        total += size;
        if size > limits.max_message_size || total > limits.max_total {
            let detail = format!(
                "the request's messages would come to more than {} octets each or {} together (limits.max_message_size, api.max_request_size); send fewer recipients per request",
                limits.max_message_size, limits.max_total
            );
            return Err(Problem::new(413, "too-large", "The messages would be too large").detail(detail));
        }
        Ok(())
    };
    let fill = |template: &Option<String>, values: Option<&BTreeMap<String, String>>| -> Result<Option<String>, Problem> {
        match (template, values) {
            (None, _) => Ok(None),
            (Some(t), None) => Ok(Some(t.clone())),
            (Some(t), Some(v)) => substitute(t, v, limits.max_message_size as usize).map(Some).ok_or_else(|| {
                Problem::new(413, "too-large", "A substituted message would be too large").detail("limits.max_message_size")
            }),
        }
    };
    let build = |to_header: &[(Option<String>, Mailbox)], subject: &str, text: &Option<String>, html: &Option<String>, personal: bool| {
        let address = |(name, mailbox): &(Option<String>, Mailbox)| match name {
            Some(n) => Address::new_address(Some(n.clone()), mailbox.to_string()),
            None => Address::new_address(None::<String>, mailbox.to_string()),
        };
        let list = |items: &[(Option<String>, Mailbox)]| Address::new_list(items.iter().map(address).collect());
        let mut b = MessageBuilder::new()
            .from(address(&from_header))
            .subject(Text::new(subject.to_string()))
            .message_id(message_id(&limits.hostname));
        if !to_header.is_empty() {
            b = b.to(list(to_header));
        }
        if !personal && !cc.is_empty() {
            b = b.cc(list(&cc));
        }
        if let Some(r) = &reply_to {
            b = b.reply_to(address(r));
        }
        for (name, value) in &req.headers {
            b = b.header(name.clone(), Text::new(value.clone()));
        }
        if let Some(text) = text {
            b = b.text_body(crlf_string(text));
        }
        if let Some(html) = html {
            b = b.html_body(crlf_string(html));
        }
        for (content_type, filename, content) in &attachments {
            b = b.attachment(content_type.clone(), filename.clone(), content.clone());
        }
        b.write_to_vec().unwrap_or_default()
    };
    let envelope_of = |rcpts: Vec<Mailbox>| rcpts.into_iter().map(|m| (m, rcpt.clone())).collect::<Vec<_>>();
    let mut messages = Vec::new();
    let subject = Some(subject.clone());
    if req.substitutions.is_empty() {
        if let Some(v) = variables.first() {
            return Err(Problem::invalid("/substitutions", format!("{{{{{v}}}}} is used but no substitutions are given")));
        }
        account(&[&subject, &req.text, &req.html])?;
        let recipients = envelope_of(to.iter().chain(&cc).chain(&bcc).map(|(_, m)| m.clone()).collect());
        let message = build(&to, subject.as_deref().unwrap_or(""), &req.text, &req.html, false);
        messages.push(Prepared { from: return_path.clone(), params: params.clone(), recipients, message }.fixed());
    } else {
        if !cc.is_empty() || !bcc.is_empty() {
            return Err(Problem::invalid("/cc", "with substitutions each message goes to one `to` recipient alone: no cc or bcc"));
        }
        let to_index: std::collections::HashMap<String, usize> =
            to.iter().enumerate().map(|(i, (_, m))| (m.to_string().to_ascii_lowercase(), i)).collect();
        let mut by_recipient: Vec<Option<&BTreeMap<String, String>>> = vec![None; to.len()];
        for (key, values) in &req.substitutions {
            let Some(&i) = to_index.get(&key.to_ascii_lowercase()) else {
                return Err(Problem::invalid(format!("/substitutions/{}", pointer_escape(key)), "not one of the to recipients"));
            };
            if by_recipient[i].replace(values).is_some() {
                return Err(Problem::invalid(format!("/substitutions/{}", pointer_escape(key)), "this recipient has values twice"));
            }
        }
        let empty = BTreeMap::new();
        for (i, recipient) in to.iter().enumerate() {
            let address = recipient.1.to_string();
            let values = by_recipient[i].unwrap_or(&empty);
            if let Some(missing) = variables.iter().find(|v| !values.contains_key(*v)) {
                let pointer = format!("/substitutions/{}", pointer_escape(&address));
                return Err(Problem::invalid(pointer, format!("no value for {{{{{missing}}}}} (to/{i})")));
            }
            let filled_subject = fill(&subject, Some(values))?;
            if filled_subject.as_deref().is_some_and(|s| s.contains(['\r', '\n'])) {
                return Err(Problem::invalid(
                    format!("/substitutions/{}", pointer_escape(&address)),
                    "values used in the subject are one line",
                ));
            }
            let (text, html) = (fill(&req.text, Some(values))?, fill(&req.html, Some(values))?);
            account(&[&filled_subject, &text, &html])?;
            let recipients = envelope_of(vec![recipient.1.clone()]);
            let message = build(std::slice::from_ref(recipient), filled_subject.as_deref().unwrap_or(""), &text, &html, true);
            messages.push(Prepared { from: return_path.clone(), params: params.clone(), recipients, message }.fixed());
        }
    }
    Ok(messages)
}

impl Prepared {
    /// SMTPUTF8 when an address needs it, 8BITMIME when the message has 8-bit octets.
    fn fixed(mut self) -> Prepared {
        let utf8 = |m: &Mailbox| !m.local.is_ascii() || !m.domain.is_ascii();
        self.params.smtputf8 = self.from.as_ref().is_some_and(utf8) || self.recipients.iter().any(|(m, _)| utf8(m));
        if !self.message.is_ascii() {
            self.params.body = Some(Body::EightBitMime);
        }
        self
    }
}

fn too_many(count: usize, limits: &Limits) -> Problem {
    let detail = format!(
        "{count} recipients; at most {} in one request (api.max_recipients) and {} in one message (limits.max_recipients)",
        limits.max_recipients, limits.max_recipients_per_message
    );
    Problem::new(422, "too-many-recipients", "Too many recipients").detail(detail)
}

/// An address as SMTP takes it (`a@b.example`, no angle brackets).
fn mailbox(text: &str, pointer: &str) -> Result<Mailbox, Problem> {
    let bare = text.trim().trim_start_matches('<').trim_end_matches('>');
    address::parse_mailbox(bare, true).map_err(|e| Problem::invalid(pointer, format!("{text:?} is not an address: {}", e.text())))
}

/// A display name and address, from `Name <a@b>`, `a@b` or `{email, name}`.
fn named(field: &AddressField, pointer: &str) -> Result<(Option<String>, Mailbox), Problem> {
    let (name, email) = match field {
        AddressField::Named(NamedAddress { email, name }) => (name.clone(), email.clone()),
        AddressField::Text(text) => match (text.find('<'), text.rfind('>')) {
            (Some(a), Some(b)) if a < b => {
                let name = text[..a].trim().trim_matches('"').trim();
                ((!name.is_empty()).then(|| name.to_string()), text[a + 1..b].to_string())
            }
            _ => (None, text.clone()),
        },
    };
    if name.as_deref().is_some_and(|n| n.contains(['\r', '\n'])) {
        return Err(Problem::invalid(pointer, "a display name is one line"));
    }
    let pointer = match field {
        AddressField::Named(_) => format!("{pointer}/email"),
        AddressField::Text(_) => pointer.to_string(),
    };
    Ok((name, mailbox(&email, &pointer)?))
}

fn list(fields: &[AddressField], pointer: &str) -> Result<Vec<(Option<String>, Mailbox)>, Problem> {
    fields.iter().enumerate().map(|(i, f)| named(f, &format!("{pointer}/{i}"))).collect()
}

/// The first line (1-based) longer than `max` octets without its CRLF, and its length.
fn longest_over(message: &[u8], max: usize) -> Option<(usize, usize)> {
    let mut lines = message.split(|&b| b == b'\n').enumerate();
    lines.find_map(|(i, line)| {
        let length = line.strip_suffix(b"\r").unwrap_or(line).len();
        (length > max).then_some((i + 1, length))
    })
}

/// CRLF line ends whatever came (LF alone, CRLF, or a mix).
fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    for (i, &b) in text.iter().enumerate() {
        if b == b'\n' && (i == 0 || text[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn crlf_string(text: &str) -> String {
    String::from_utf8(crlf(text.as_bytes())).unwrap_or_default()
}

/// xtext (RFC 3461 4): `+` and `=` and anything outside `!`..`~` as `+HH`.
fn xtext(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// A JSON Pointer reference token (RFC 6901 4): `~` as `~0`, `/` as `~1`.
fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Distinct `{{name}}` variables a request's templates may use.
const MAX_VARIABLES: usize = 100;

/// The `{{name}}` variables the templates use, in order of first use.
fn variables(templates: &[&str]) -> Result<Vec<String>, Problem> {
    let mut found: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in templates {
        let mut rest = *t;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else { break };
            let name = after[..end].trim();
            if !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                && seen.insert(name)
            {
                found.push(name.to_string());
                if found.len() > MAX_VARIABLES {
                    return Err(Problem::invalid("/substitutions", format!("more than {MAX_VARIABLES} different {{{{variables}}}}")));
                }
            }
            rest = &after[end + 2..];
        }
    }
    Ok(found)
}

/// `{{name}}` replaced by its value (variables without one were refused before); `None` once
/// the result would pass `cap` octets.
fn substitute(template: &str, values: &BTreeMap<String, String>, cap: usize) -> Option<String> {
    let mut out = String::with_capacity(template.len().min(cap));
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                match values.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
        if out.len() > cap {
            return None;
        }
    }
    out.push_str(rest);
    (out.len() <= cap).then_some(out)
}

/// `<time.counter@hostname>`'s inside, unique in this process and across restarts.
fn message_id(hostname: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    format!("{micros}.{}@{hostname}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_recipients: 10,
            max_message_size: 1 << 20,
            max_total: 4 << 20,
            max_recipients_per_message: 10,
            max_line: 998,
            hostname: "relay.test".into(),
        }
    }

    #[test]
    fn substitutions_fill_each_recipients_message_and_leave_text_without_variables_alone() {
        let values: BTreeMap<String, String> = [("name".to_string(), "Ann".to_string())].into();
        assert_eq!(substitute("Hi {{name}}, {{ name }}! {{", &values, 100).unwrap(), "Hi Ann, Ann! {{");
        assert_eq!(substitute("{{other}} stays", &values, 100).unwrap(), "{{other}} stays");
        assert!(substitute(&"{{name}}".repeat(40), &values, 100).is_none(), "stops at the cap");
        assert_eq!(variables(&["a {{x}} {{y}}", "{{x}} {{not valid}} {{}}"]).unwrap(), ["x", "y"]);
        let many: String = (0..200).map(|i| format!("{{{{v{i}}}}}")).collect();
        assert!(variables(&[&many]).is_err());
        let req: MessageRequest = serde_json::from_value(serde_json::json!({
            "from": "Shop <s@shop.test>", "to": ["a@x.test", "b@x.test"], "subject": "For {{n}}", "text": "{{n}}\n",
            "substitutions": {"a@x.test": {"n": "A"}, "B@X.test": {"n": "B"}}
        }))
        .unwrap();
        let messages = prepare(req, &limits()).unwrap();
        assert_eq!(messages.len(), 2);
        let text = |i: usize| String::from_utf8(messages[i].message.clone()).unwrap();
        assert!(text(0).contains("Subject: For A\r\n") && text(1).contains("Subject: For B\r\n"), "{}", text(0));
        assert!(text(0).contains("From: \"Shop\" <s@shop.test>\r\n"), "{}", text(0));
        assert_eq!(messages[1].recipients[0].0.to_string(), "b@x.test");
        assert_eq!(messages[0].from.as_ref().unwrap().to_string(), "s@shop.test");
    }

    #[test]
    fn raw_messages_get_crlf_and_their_8bit_and_utf8_declared() {
        let req: MessageRequest = serde_json::from_value(serde_json::json!({
            "envelope": {"from": "", "to": ["jörg@x.test"]}, "raw": "Subject: é\n\nbody\r\nmixed\n"
        }))
        .unwrap();
        let m = prepare(req, &limits()).unwrap().remove(0);
        assert_eq!(m.message, "Subject: é\r\n\r\nbody\r\nmixed\r\n".as_bytes());
        assert!(m.from.is_none() && m.params.smtputf8 && m.params.body == Some(Body::EightBitMime));
    }

    #[test]
    fn a_raw_line_longer_than_smtp_takes_is_refused_with_its_number() {
        let raw = |body: &str| -> MessageRequest {
            serde_json::from_value(
                serde_json::json!({"envelope": {"from": "s@x.test", "to": ["a@x.test"]}, "raw": format!("Subject: s\n\nok\n{body}\n")}),
            )
            .unwrap()
        };
        let at_limit = prepare(raw(&"x".repeat(998)), &limits());
        assert!(at_limit.is_ok(), "998 octets without CRLF is the limit: {:?}", at_limit.err().map(|p| p.detail));
        let p = prepare(raw(&"x".repeat(999)), &limits()).err().unwrap();
        assert_eq!(p.status, 422);
        assert!(p.detail.as_deref().unwrap().contains("line 4 is 999 octets; at most 998"), "{:?}", p.detail);
        assert_eq!(p.pointer.as_deref(), Some("/raw"));
        assert!(prepare(raw(&"x".repeat(1500)), &Limits { max_line: 2000, ..limits() }).is_ok(), "as limits.max_line_length says");
    }

    #[test]
    fn envid_is_xtext_and_pointers_escape_slashes() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(pointer_escape("a/b~c"), "a~1b~0c");
        assert_eq!(crlf(b"\na\r\nb\n"), b"\r\na\r\nb\r\n");
    }

    #[test]
    fn copies_of_attachments_and_substituted_text_count_against_the_request_size() {
        // 10 recipients x a 200 KB attachment would be 2.7 MB built from a 270 KB request.
        let content = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 200_000]);
        let to: Vec<String> = (0..10).map(|i| format!("r{i}@x.test")).collect();
        let subs: BTreeMap<String, BTreeMap<String, String>> =
            to.iter().map(|t| (t.clone(), [("n".to_string(), "v".to_string())].into())).collect();
        let req: MessageRequest = serde_json::from_value(serde_json::json!({
            "from": "a@x.test", "to": to, "text": "{{n}}", "substitutions": subs,
            "attachments": [{"filename": "f.bin", "content": content}]
        }))
        .unwrap();
        let tight = Limits { max_total: 1 << 20, ..limits() };
        assert_eq!(prepare(req, &tight).unwrap_err().status, 413);
        let typo = serde_json::from_value::<MessageRequest>(serde_json::json!({
            "from": "a@x.test", "to": ["b@x.test"], "text": "t", "reply_to": {"email": "c@x.test", "nmae": "typo"}
        }));
        assert!(typo.is_err(), "an address object with an unknown field is refused");
        let raw: MessageRequest = serde_json::from_value(serde_json::json!({
            "envelope": {"from": "a@x.test", "to": ["b@x.test"]}, "raw": "Subject: x\nnot a field\n\nbody\n"
        }))
        .unwrap();
        assert_eq!(prepare(raw, &limits()).unwrap_err().pointer.as_deref(), Some("/raw"));
    }

    #[test]
    fn a_message_over_the_size_limit_is_413() {
        let req: MessageRequest =
            serde_json::from_value(serde_json::json!({"from": "a@x.test", "to": ["b@x.test"], "text": "x".repeat(2 << 20)})).unwrap();
        assert_eq!(prepare(req, &limits()).unwrap_err().status, 413);
    }
}
