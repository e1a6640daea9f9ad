//! Client commands (RFC 5321 4.1), parsed from one line without its CRLF.

use super::address::{self, AddressError, MailParams, Mailbox, ParamError, RcptParams};
use super::reply::{Reply, codes};

/// Base command line limit including CRLF (RFC 5321 4.5.3.1.4).
pub const COMMAND_LINE: usize = 512;
/// Extra octets RFC 3461 section 5 allows on MAIL and RCPT lines when DSN is advertised.
pub const MAIL_DSN_EXTRA: usize = 100;
pub const RCPT_DSN_EXTRA: usize = 500;
/// AUTH command lines and SASL responses may be this long (RFC 4954 4).
pub const AUTH_LINE: usize = 12288;
/// The longest line the reader buffers before it gives up on finding CRLF.
pub const MAX_LINE: usize = AUTH_LINE;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        from: Option<Mailbox>,
        params: MailParams,
    },
    Rcpt {
        to: Recipient,
        params: RcptParams,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 4).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

impl Command {
    /// The verb in lower case, for logs and counts.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Helo(_) => "helo",
            Command::Ehlo(_) => "ehlo",
            Command::Mail { .. } => "mail",
            Command::Rcpt { .. } => "rcpt",
            Command::Data => "data",
            Command::Bdat { .. } => "bdat",
            Command::Rset => "rset",
            Command::Noop => "noop",
            Command::Quit => "quit",
            Command::Vrfy => "vrfy",
            Command::Expn => "expn",
            Command::Help => "help",
            Command::StartTls => "starttls",
            Command::Auth { .. } => "auth",
        }
    }
}

/// An RCPT path: a mailbox, or the bare `Postmaster` that RFC 5321 4.5.1 requires us to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Mailbox(Mailbox),
    Postmaster,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Unrecognized verb or malformed line (500 5.5.2).
    Syntax(&'static str),
    /// Line longer than the verb allows (500 5.5.2).
    LineTooLong,
    /// AUTH line over 12288 octets (500 5.5.6, RFC 4954 6).
    AuthLineTooLong,
    /// Wrong arguments (501 5.5.4).
    Arguments(&'static str),
    /// Path syntax (553 5.1.3).
    Address(AddressError),
    /// Unknown parameter (555 5.5.4) or bad parameter value (501 5.5.4).
    Parameter(ParamError),
    /// An HTTP request line: someone is abusing the port (421 and close).
    Http,
    /// A command we recognise but do not offer (502 5.5.1).
    NotImplemented(&'static str),
}

impl CommandError {
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Syntax(t) => codes::syntax(t),
            CommandError::LineTooLong => codes::syntax("Line too long"),
            CommandError::AuthLineTooLong => Reply::new(500, super::reply::Enhanced(5, 5, 6), "Authentication exchange line is too long"),
            CommandError::Arguments(t) => codes::bad_arguments(t),
            CommandError::Address(AddressError::NeedsSmtpUtf8) => {
                Reply::new(553, super::reply::Enhanced(5, 6, 7), AddressError::NeedsSmtpUtf8.text())
            }
            CommandError::Address(e) => codes::bad_address(e.text()),
            CommandError::Parameter(ParamError::Unknown(k)) => codes::bad_parameter(&format!("Unsupported parameter {}", truncate(k, 32))),
            CommandError::Parameter(ParamError::BadValue(t)) => codes::bad_arguments(t),
            CommandError::Http => codes::closing("HTTP is not spoken here"),
            CommandError::NotImplemented(t) => codes::not_implemented(t),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses one command line (CRLF already removed). `line_len` counts the CRLF, for the limits.
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::Syntax("Invalid UTF-8 in command"))?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let limit = match verb.as_str() {
        "MAIL" => COMMAND_LINE + MAIL_DSN_EXTRA,
        "RCPT" => COMMAND_LINE + RCPT_DSN_EXTRA,
        "AUTH" => AUTH_LINE,
        _ => COMMAND_LINE,
    };
    if line.len() + 2 > limit {
        return Err(if verb == "AUTH" { CommandError::AuthLineTooLong } else { CommandError::LineTooLong });
    }
    let no_args = |cmd: Command| {
        if rest.trim().is_empty() { Ok(cmd) } else { Err(CommandError::Arguments("No arguments allowed")) }
    };
    match verb.as_str() {
        "EHLO" => Ok(Command::Ehlo(parse_helo_arg(rest)?)),
        "HELO" => Ok(Command::Helo(parse_helo_arg(rest)?)),
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(Command::Data),
        "BDAT" => parse_bdat(rest),
        "RSET" => no_args(Command::Rset),
        // NOOP and HELP may carry an argument, which is ignored (RFC 5321 4.1.1.9, 4.1.1.8).
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "GET" | "POST" | "HEAD" | "PUT" | "CONNECT" | "OPTIONS" | "DELETE" => Err(CommandError::Http),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => parse_auth(rest),
        "TURN" | "ETRN" | "ATRN" | "SAML" | "SEND" | "SOML" => Err(CommandError::NotImplemented("Command not implemented")),
        _ => Err(CommandError::Syntax("Syntax error, command unrecognized")),
    }
}

/// The EHLO/HELO argument: a domain or an address literal (RFC 5321 4.1.1.1). It is checked for
/// syntax only and never compared with the client's address (RFC 5321 4.1.4).
fn parse_helo_arg(rest: &str) -> Result<String, CommandError> {
    let arg = rest.trim();
    if arg.is_empty() || arg.contains(' ') {
        return Err(CommandError::Arguments("EHLO/HELO requires a domain or address literal"));
    }
    address::check_domain(arg).map_err(|_| CommandError::Arguments("Invalid domain or address literal"))?;
    Ok(arg.to_string())
}

/// Splits `FROM:<path> params` / `TO:<path> params`, tolerating a space after the colon.
fn split_path<'a>(rest: &'a str, keyword: &str) -> Result<(&'a str, &'a str), CommandError> {
    let head = rest.get(..keyword.len()).filter(|h| h.eq_ignore_ascii_case(keyword));
    let after = head
        .map(|_| rest[keyword.len()..].trim_start())
        .ok_or(CommandError::Arguments("Syntax: expected FROM:<address> or TO:<address>"))?;
    let inner = after.strip_prefix('<').ok_or(CommandError::Address(AddressError::Syntax("Path must be in angle brackets")))?;
    // A quoted local part may contain '>', so find the closing bracket outside quotes.
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                let params = &inner[i + 1..];
                if !params.is_empty() && !params.starts_with(' ') {
                    return Err(CommandError::Arguments("Parameters must follow a space"));
                }
                return Ok((&inner[..i], params.trim()));
            }
            _ => {}
        }
    }
    Err(CommandError::Address(AddressError::Syntax("Missing closing angle bracket")))
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    let (path, params) = split_path(rest, "FROM:")?;
    let params = address::parse_mail_params(params).map_err(CommandError::Parameter)?;
    let from = if path.is_empty() { None } else { Some(address::parse_mailbox(path, params.smtputf8).map_err(CommandError::Address)?) };
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    let (path, params) = split_path(rest, "TO:")?;
    let params = address::parse_rcpt_params(params).map_err(CommandError::Parameter)?;
    // The UTF-8 allowance of RCPT depends on the transaction's MAIL; the session re-checks.
    let to = if path.eq_ignore_ascii_case("postmaster") {
        Recipient::Postmaster
    } else {
        Recipient::Mailbox(address::parse_mailbox(path, true).map_err(CommandError::Address)?)
    };
    Ok(Command::Rcpt { to, params })
}

fn parse_auth(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split_ascii_whitespace();
    let mechanism = words.next().ok_or(CommandError::Arguments("Syntax: AUTH mechanism [initial-response]"))?.to_ascii_uppercase();
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Arguments("Syntax: AUTH mechanism [initial-response]"));
    }
    Ok(Command::Auth { mechanism, initial })
}

fn parse_bdat(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split_ascii_whitespace();
    let size = words
        .next()
        .filter(|w| w.bytes().all(|b| b.is_ascii_digit()) && w.len() <= 18)
        .and_then(|w| w.parse().ok())
        .ok_or(CommandError::Arguments("BDAT requires a chunk size"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Arguments("Syntax: BDAT size [LAST]")),
    };
    if words.next().is_some() {
        return Err(CommandError::Arguments("Syntax: BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> u16 {
        match parse(line.as_bytes()) {
            Ok(_) => 0,
            Err(e) => e.reply().code,
        }
    }

    #[test]
    fn parses_commands_table() {
        let m = |l: &str, d: &str| Some(Mailbox { local: l.into(), domain: d.into() });
        let table: Vec<(&str, Command)> = vec![
            ("EHLO client.example", Command::Ehlo("client.example".into())),
            ("helo [192.0.2.1]", Command::Helo("[192.0.2.1]".into())),
            ("MAIL FROM:<>", Command::Mail { from: None, params: MailParams::default() }),
            ("mail from:<a@b.org>", Command::Mail { from: m("a", "b.org"), params: MailParams::default() }),
            (
                "MAIL FROM: <a@b.org> SIZE=10",
                Command::Mail { from: m("a", "b.org"), params: MailParams { size: Some(10), ..Default::default() } },
            ),
            ("RCPT TO:<Postmaster>", Command::Rcpt { to: Recipient::Postmaster, params: RcptParams::default() }),
            ("RCPT TO:<postmaster>", Command::Rcpt { to: Recipient::Postmaster, params: RcptParams::default() }),
            (
                "RCPT TO:<\"a>b\"@c.org>",
                Command::Rcpt {
                    to: Recipient::Mailbox(Mailbox { local: "\"a>b\"".into(), domain: "c.org".into() }),
                    params: RcptParams::default(),
                },
            ),
            ("DATA", Command::Data),
            ("BDAT 100 LAST", Command::Bdat { size: 100, last: true }),
            ("BDAT 0", Command::Bdat { size: 0, last: false }),
            ("NOOP anything", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY someone", Command::Vrfy),
            ("STARTTLS", Command::StartTls),
            ("AUTH plain AGEAYg==", Command::Auth { mechanism: "PLAIN".into(), initial: Some("AGEAYg==".into()) }),
            ("AUTH LOGIN", Command::Auth { mechanism: "LOGIN".into(), initial: None }),
        ];
        for (line, expected) in table {
            assert_eq!(parse(line.as_bytes()), Ok(expected), "{line}");
        }
    }

    #[test]
    fn maps_errors_to_reply_codes() {
        let table = [
            ("FOO", 500),
            ("EHLO", 501),
            ("EHLO bad_name!", 501),
            ("MAIL TO:<a@b.org>", 501),
            ("MAIL FROM:a@b.org", 553),
            ("MAIL FROM:<a@b.org> FOO=1", 555),
            ("MAIL FROM:<a@b.org> SIZE=big", 501),
            ("RCPT TO:<not-an-address>", 553),
            ("DATA now", 501),
            ("BDAT x", 501),
            ("BDAT 10 NOTLAST", 501),
            ("GET / HTTP/1.1", 421),
            ("CONNECT example.com:443 HTTP/1.1", 421),
            ("TURN", 502),
            ("STARTTLS now", 501),
            ("AUTH", 501),
        ];
        for (line, expected) in table {
            assert_eq!(code(line), expected, "{line}");
        }
    }

    #[test]
    fn enforces_per_verb_line_limits() {
        let long_noop = format!("NOOP {}", "x".repeat(COMMAND_LINE));
        assert_eq!(parse(long_noop.as_bytes()), Err(CommandError::LineTooLong));
        // RCPT may use 500 more octets with DSN parameters.
        let domain = format!("{}.org", "d".repeat(60));
        let rcpt = format!("RCPT TO:<{}@{domain}> ORCPT=rfc822;{}", "a".repeat(60), "x".repeat(480));
        assert!(rcpt.len() > COMMAND_LINE);
        assert!(parse(rcpt.as_bytes()).is_ok());
        let too_long = format!("RCPT TO:<a@b.org> ORCPT=rfc822;{}", "x".repeat(1100));
        assert_eq!(parse(too_long.as_bytes()), Err(CommandError::LineTooLong));
    }
}
