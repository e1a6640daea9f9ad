//! Paths, mailboxes and MAIL/RCPT parameters (RFC 5321 4.1.2, RFC 6531, RFC 1870, 6152, 3461).

use serde::{Deserialize, Serialize};
use std::fmt;

/// RFC 5321 4.5.3.1.1 to 4.5.3.1.3.
pub const MAX_LOCAL_PART: usize = 64;
pub const MAX_DOMAIN: usize = 255;
pub const MAX_PATH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// The path is syntactically wrong (553 5.1.3).
    Syntax(&'static str),
    /// A length limit of RFC 5321 4.5.3.1 is exceeded (553 5.1.3 as well, with its own text).
    TooLong(&'static str),
    /// Non-ASCII without the SMTPUTF8 parameter (553 5.6.7, RFC 6531 3.5).
    NeedsSmtpUtf8,
}

impl AddressError {
    pub fn text(&self) -> &'static str {
        match self {
            AddressError::Syntax(t) | AddressError::TooLong(t) => t,
            AddressError::NeedsSmtpUtf8 => "Non-ASCII address requires SMTPUTF8",
        }
    }
}

/// A mailbox `local@domain`; the domain is a name or an address literal in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    pub fn is_address_literal(&self) -> bool {
        self.domain.starts_with('[')
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Parses the inside of `<...>` in a MAIL or RCPT path: optional source route, then a mailbox.
/// Source routes (`@a,@b:`) are accepted and dropped (RFC 5321 4.1.2 and appendix C).
pub fn parse_mailbox(path: &str, utf8_allowed: bool) -> Result<Mailbox, AddressError> {
    if path.len() > MAX_PATH {
        return Err(AddressError::TooLong("Path too long"));
    }
    if !utf8_allowed && !path.is_ascii() {
        return Err(AddressError::NeedsSmtpUtf8);
    }
    let mailbox = match path.strip_prefix('@') {
        Some(_) => {
            let colon = path.find(':').ok_or(AddressError::Syntax("Bad source route"))?;
            for hop in path[..colon].split(',') {
                let hop = hop.strip_prefix('@').ok_or(AddressError::Syntax("Bad source route"))?;
                check_domain(hop)?;
            }
            &path[colon + 1..]
        }
        None => path,
    };
    let at = mailbox.rfind('@').ok_or(AddressError::Syntax("Address needs a domain"))?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    check_local_part(local)?;
    check_domain(domain)?;
    Ok(Mailbox { local: local.to_string(), domain: domain.to_string() })
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_local_part(local: &str) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::Syntax("Empty local part"));
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::TooLong("Local part too long"));
    }
    if let Some(inner) = local.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or(AddressError::Syntax("Bad quoted string"))?;
        let mut escaped = false;
        for c in inner.chars() {
            match (escaped, c) {
                (true, ' '..='~') => escaped = false,
                (true, _) => return Err(AddressError::Syntax("Bad quoted pair")),
                (false, '\\') => escaped = true,
                (false, '"') => return Err(AddressError::Syntax("Bad quoted string")),
                (false, c) if (' '..='~').contains(&c) || !c.is_ascii() => {}
                _ => return Err(AddressError::Syntax("Bad character in quoted string")),
            }
        }
        if escaped {
            return Err(AddressError::Syntax("Bad quoted string"));
        }
        return Ok(());
    }
    // Dot-string: atoms separated by single dots.
    for atom in local.split('.') {
        if atom.is_empty() || !atom.chars().all(is_atext) {
            return Err(AddressError::Syntax("Bad local part"));
        }
    }
    Ok(())
}

/// A domain name or an address literal (RFC 5321 4.1.3).
pub fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::Syntax("Empty domain"));
    }
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong("Domain too long"));
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let literal = literal.strip_suffix(']').ok_or(AddressError::Syntax("Bad address literal"))?;
        return check_address_literal(literal);
    }
    for label in domain.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii());
        if !valid {
            return Err(AddressError::Syntax("Bad domain"));
        }
    }
    Ok(())
}

fn check_address_literal(literal: &str) -> Result<(), AddressError> {
    let ok = match literal.strip_prefix("IPv6:") {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => literal.parse::<std::net::Ipv4Addr>().is_ok(),
    };
    if ok { Ok(()) } else { Err(AddressError::Syntax("Bad address literal")) }
}

/// BODY= values (RFC 6152); BINARYMIME is not advertised, so it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

/// RET= (RFC 3461 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Hdrs,
}

/// MAIL FROM parameters Sluice understands and carries with the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// ENVID, still xtext-encoded as received (RFC 3461 4.4).
    pub envid: Option<String>,
    /// AUTH= (RFC 4954 5), xtext as received; `<>` means unknown submitter.
    #[serde(default)]
    pub auth: Option<String>,
    /// MT-PRIORITY= (RFC 6710), -9 (lowest) to 9; after intake's policy, the priority the
    /// message is delivered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i8>,
    /// REQUIRETLS (RFC 8689): deliver only over verified TLS to hosts that offer REQUIRETLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
    /// Not an SMTP parameter: intake sets it from a `TLS-Required: No` header field (RFC 8689
    /// 5), and delivery then ignores the recipient side's TLS policy for this message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_optional: bool,
}

/// NOTIFY= (RFC 3461 4.1): NEVER, or any of SUCCESS/FAILURE/DELAY.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub never: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    /// ORCPT as `addr-type;xtext`, kept encoded (RFC 3461 4.2).
    pub orcpt: Option<String>,
    /// RRVS (RFC 7293) as given: `date-time` with an optional `;C` (continue) or `;R`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rrvs: Option<String>,
}

impl RcptParams {
    /// RRVS given without `;C`: if the check cannot be passed on, the recipient fails
    /// (RFC 7293 3.3); with `;C` delivery continues without it.
    pub fn rrvs_must_be_checked(&self) -> bool {
        self.rrvs.as_deref().is_some_and(|v| !v.to_ascii_uppercase().ends_with(";C"))
    }
}

/// An RFC 3339 date-time, roughly: `2014-04-03T23:01:00Z` or with an offset and fraction.
fn is_date_time(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 20
        && b.len() <= 40
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && b.iter().all(|c| c.is_ascii_digit() || b"-:+.TtZz".contains(c))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// Unknown or unadvertised parameter (555 5.5.4).
    Unknown(String),
    /// Known parameter with a bad value (501 5.5.4).
    BadValue(&'static str),
}

/// Splits `KEY=VALUE` tokens; keywords are case-insensitive (RFC 5321 4.1.2 esmtp-keyword).
fn split_params(text: &str) -> impl Iterator<Item = (String, Option<&str>)> {
    text.split_ascii_whitespace().map(|token| match token.split_once('=') {
        Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
        None => (token.to_ascii_uppercase(), None),
    })
}

pub fn parse_mail_params(text: &str) -> Result<MailParams, ParamError> {
    let mut p = MailParams::default();
    for (key, value) in split_params(text) {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                p.size = Some(v.parse().map_err(|_| ParamError::BadValue("Bad SIZE value"))?);
            }
            ("BODY", Some(v)) => {
                p.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    _ => return Err(ParamError::BadValue("Unsupported BODY value")),
                });
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("RET", Some(v)) => {
                p.ret = Some(match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(ParamError::BadValue("Bad RET value")),
                });
            }
            ("ENVID", Some(v)) if is_xtext(v) && v.len() <= 100 => p.envid = Some(v.to_string()),
            ("ENVID", _) => return Err(ParamError::BadValue("Bad ENVID value")),
            ("AUTH", Some(v)) if v == "<>" || (is_xtext(v) && v.len() <= 500) => p.auth = Some(v.to_string()),
            ("AUTH", _) => return Err(ParamError::BadValue("Bad AUTH value")),
            ("REQUIRETLS", None) => p.requiretls = true,
            ("MT-PRIORITY", Some(v)) => {
                let n: i8 = v.strip_prefix('+').unwrap_or(v).parse().map_err(|_| ParamError::BadValue("Bad MT-PRIORITY value"))?;
                if !(-9..=9).contains(&n) || v.len() > 2 {
                    return Err(ParamError::BadValue("MT-PRIORITY must be between -9 and 9"));
                }
                p.priority = Some(n);
            }
            _ => return Err(ParamError::Unknown(key)),
        }
    }
    Ok(p)
}

pub fn parse_rcpt_params(text: &str) -> Result<RcptParams, ParamError> {
    let mut p = RcptParams::default();
    for (key, value) in split_params(text) {
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => p.notify = Some(parse_notify(v)?),
            ("ORCPT", Some(v)) => {
                let valid = v.split_once(';').is_some_and(|(t, a)| !t.is_empty() && is_xtext(a) && !a.is_empty());
                if !valid || v.len() > 500 {
                    return Err(ParamError::BadValue("Bad ORCPT value"));
                }
                p.orcpt = Some(v.to_string());
            }
            ("RRVS", Some(v)) => {
                let (time, action) = v.split_once(';').map_or((v, None), |(t, a)| (t, Some(a)));
                if !is_date_time(time) || action.is_some_and(|a| !a.eq_ignore_ascii_case("C") && !a.eq_ignore_ascii_case("R")) {
                    return Err(ParamError::BadValue("Bad RRVS value"));
                }
                p.rrvs = Some(v.to_string());
            }
            _ => return Err(ParamError::Unknown(key)),
        }
    }
    Ok(p)
}

fn parse_notify(v: &str) -> Result<Notify, ParamError> {
    let mut n = Notify::default();
    for item in v.split(',') {
        match item.to_ascii_uppercase().as_str() {
            "NEVER" => n.never = true,
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => return Err(ParamError::BadValue("Bad NOTIFY value")),
        }
    }
    // NEVER must stand alone (RFC 3461 4.1).
    if n.never && (n.success || n.failure || n.delay) {
        return Err(ParamError::BadValue("NOTIFY=NEVER cannot be combined"));
    }
    Ok(n)
}

/// xtext (RFC 3461 4): printable ASCII except `+` and `=`, with `+XX` hex escapes.
fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if i + 2 >= b.len() || !(hex(b[i + 1]) && hex(b[i + 2])) {
                    return false;
                }
                i += 3;
            }
            b'!'..=b'~' if b[i] != b'=' => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mailboxes_table() {
        let ok = [
            ("user@example.com", "user", "example.com"),
            ("\"john doe\"@example.com", "\"john doe\"", "example.com"),
            ("@relay.a,@relay.b:user@example.com", "user", "example.com"),
            ("a.b+tag@sub.example-x.org", "a.b+tag", "sub.example-x.org"),
            ("user@[192.0.2.1]", "user", "[192.0.2.1]"),
            ("user@[IPv6:2001:db8::1]", "user", "[IPv6:2001:db8::1]"),
        ];
        for (input, local, domain) in ok {
            let m = parse_mailbox(input, false).unwrap_or_else(|e| panic!("{input}: {e:?}"));
            assert_eq!((m.local.as_str(), m.domain.as_str()), (local, domain), "{input}");
        }
    }

    #[test]
    fn rejects_bad_mailboxes_table() {
        let bad = [
            "user",
            "@example.com",
            "user@",
            "us..er@example.com",
            ".user@example.com",
            "user@-bad.com",
            "user@exa_mple.com",
            "user@[300.1.1.1]",
            "user@[192.0.2.1",
            "\"unterminated@example.com",
            "user name@example.com",
        ];
        for input in bad {
            assert!(parse_mailbox(input, false).is_err(), "{input} should fail");
        }
    }

    #[test]
    fn enforces_rfc5321_length_limits() {
        let local = "a".repeat(65);
        assert_eq!(parse_mailbox(&format!("{local}@x.org"), false), Err(AddressError::TooLong("Local part too long")));
        let label = "a".repeat(63);
        let domain = [label.as_str(); 5].join(".");
        assert!(matches!(parse_mailbox(&format!("u@{domain}"), false), Err(AddressError::TooLong(_))));
        assert!(parse_mailbox(&format!("{}@x.org", "a".repeat(64)), false).is_ok());
    }

    #[test]
    fn requires_smtputf8_for_non_ascii() {
        assert_eq!(parse_mailbox("jörg@example.de", false), Err(AddressError::NeedsSmtpUtf8));
        assert!(parse_mailbox("jörg@bücher.de", true).is_ok());
    }

    #[test]
    fn parses_mail_parameters() {
        let p = parse_mail_params("SIZE=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=abc+2B1").unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("abc+2B1"));
        assert_eq!(parse_mail_params("FOO=1"), Err(ParamError::Unknown("FOO".into())));
        assert_eq!(parse_mail_params("BODY=BINARYMIME"), Err(ParamError::BadValue("Unsupported BODY value")));
        assert!(parse_mail_params("SIZE=x").is_err());
        assert!(parse_mail_params("ENVID=a+zz").is_err());
        let p = parse_rcpt_params("RRVS=2014-04-03T23:01:00Z;C").unwrap();
        assert_eq!(p.rrvs.as_deref(), Some("2014-04-03T23:01:00Z;C"));
        assert!(!p.rrvs_must_be_checked());
        assert!(parse_rcpt_params("RRVS=2014-04-03T23:01:00.5+02:00").unwrap().rrvs_must_be_checked());
        for bad in ["RRVS=yesterday", "RRVS=2014-04-03T23:01:00Z;X", "RRVS"] {
            assert!(parse_rcpt_params(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_mail_params("MT-PRIORITY=+3").unwrap().priority, Some(3));
        assert_eq!(parse_mail_params("MT-PRIORITY=-9").unwrap().priority, Some(-9));
        for bad in ["MT-PRIORITY=10", "MT-PRIORITY=-10", "MT-PRIORITY=x", "MT-PRIORITY", "MT-PRIORITY=+-1"] {
            assert!(parse_mail_params(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_rcpt_parameters() {
        let p = parse_rcpt_params("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u@x.org").unwrap();
        assert_eq!(p.notify, Some(Notify { success: true, failure: true, ..Notify::default() }));
        assert_eq!(p.orcpt.as_deref(), Some("rfc822;u@x.org"));
        assert!(parse_rcpt_params("NOTIFY=NEVER,SUCCESS").is_err());
        assert!(parse_rcpt_params("ORCPT=nosemicolon").is_err());
        assert_eq!(parse_rcpt_params("XFOO"), Err(ParamError::Unknown("XFOO".into())));
    }
}
