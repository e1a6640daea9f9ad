//! STARTTLS (RFC 3207) and AUTH (RFC 4954) for the intake session.

use super::*;
use crate::smtp::reply::Enhanced;
use crate::smtp::sasl::{self, SaslError, Secret};

/// Where a multi-step SASL exchange stands.
#[derive(Debug)]
pub(in crate::smtp) enum SaslStep {
    Plain,
    LoginUser,
    LoginPassword { username: String },
}

/// What the driver found when it checked the credentials of an [`Event::Authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Success(String),
    Failed,
    /// The users file could not be read, or the like (454 4.7.0).
    TemporaryFailure,
    /// Too many failures from this address: 421 and close.
    LockedOut,
}

impl Session {
    /// AUTH is advertised and accepted only over TLS, or from `auth.plaintext_networks`.
    pub(super) fn auth_offered(&self) -> bool {
        self.cfg.auth_available && (self.tls.is_some() || self.client.plaintext_auth)
    }

    pub(super) fn start_tls(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        if !self.cfg.tls_available {
            self.reply(Reply::new(454, Enhanced(4, 7, 0), "TLS not available"), out);
            return None;
        }
        if self.tls.is_some() {
            self.reply(codes::bad_sequence("TLS already active"), out);
            return None;
        }
        Reply::new(220, Enhanced(2, 0, 0), "Ready to start TLS").write_to(out);
        // RFC 3207 4.2, CVE-2011-0411: whatever was pipelined after STARTTLS arrived in
        // plaintext and must never be acted on inside the encrypted session.
        self.pos = self.input.len();
        self.phase = Phase::AwaitingTls;
        Some(Event::StartTls)
    }

    /// The handshake after [`Event::StartTls`] succeeded: everything learnt in plaintext is
    /// forgotten (RFC 3207 4.2); the client must EHLO again.
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.input.clear();
        self.pos = 0;
        self.helo = None;
        self.envelope = None;
        self.identity = None;
        self.tls = Some(info);
        self.phase = Phase::Command;
    }

    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<&str>, out: &mut Vec<u8>) -> Option<Event> {
        let refusal = if !self.cfg.auth_available {
            Some(codes::not_implemented("AUTH not available"))
        } else if self.helo.is_none() {
            Some(codes::bad_sequence("Send EHLO first"))
        } else if self.identity.is_some() {
            Some(codes::bad_sequence("Already authenticated"))
        } else if self.envelope.is_some() {
            Some(codes::bad_sequence("AUTH not allowed during a mail transaction"))
        } else if self.tls.is_none() && !self.client.plaintext_auth {
            Some(Reply::new(538, Enhanced(5, 7, 11), "Encryption required for requested authentication mechanism"))
        } else {
            None
        };
        if let Some(reply) = refusal {
            self.reply(reply, out);
            return None;
        }
        match (mechanism, initial) {
            ("PLAIN", Some(response)) => self.sasl_response(SaslStep::Plain, response, out),
            ("PLAIN", None) => self.challenge(SaslStep::Plain, "", out),
            ("LOGIN", Some(username)) => self.sasl_response(SaslStep::LoginUser, username, out),
            ("LOGIN", None) => self.challenge(SaslStep::LoginUser, "Username:", out),
            _ => {
                self.reply(Reply::new(504, Enhanced(5, 5, 4), "Unrecognized authentication mechanism"), out);
                None
            }
        }
    }

    /// A `334` challenge (no enhanced code: it is not a completion reply).
    fn challenge(&mut self, step: SaslStep, text: &str, out: &mut Vec<u8>) -> Option<Event> {
        Reply::plain(334, vec![sasl::encode(text)]).write_to(out);
        self.phase = Phase::AuthResponse(step);
        None
    }

    /// Reads one SASL response line in `AuthResponse`.
    pub(super) fn read_sasl_line(&mut self, out: &mut Vec<u8>) -> Option<Event> {
        let rest = &self.input[self.pos..];
        let too_long = || Reply::new(500, Enhanced(5, 5, 6), "Authentication exchange line is too long");
        let Some(lf) = memchr::memchr(b'\n', rest) else {
            if rest.len() > command::AUTH_LINE {
                self.pos = self.input.len();
                self.phase = Phase::DiscardLine(too_long());
            }
            return Some(Event::NeedInput);
        };
        let line = String::from_utf8_lossy(&rest[..lf]).trim_end_matches('\r').to_string();
        self.pos += lf + 1;
        let Phase::AuthResponse(step) = std::mem::replace(&mut self.phase, Phase::Command) else { unreachable!() };
        if line.len() + 2 > command::AUTH_LINE {
            self.reply(too_long(), out);
            return None;
        }
        self.sasl_response(step, &line, out)
    }

    fn sasl_response(&mut self, step: SaslStep, line: &str, out: &mut Vec<u8>) -> Option<Event> {
        let decoded = match step {
            SaslStep::Plain => sasl::decode_plain(line).map(Some),
            SaslStep::LoginUser => sasl::decode_login(line).map(|username| {
                self.phase = Phase::AuthResponse(SaslStep::LoginPassword { username });
                None
            }),
            SaslStep::LoginPassword { username } => sasl::decode_login(line)
                .map(|password| Some(Credentials { authzid: String::new(), username, password: Secret::new(password) })),
        };
        match decoded {
            Ok(None) => {
                Reply::plain(334, vec![sasl::encode("Password:")]).write_to(out);
                None
            }
            // No proxy authorization: the authorization identity must be the user or empty.
            Ok(Some(c)) if !c.authzid.is_empty() && c.authzid != c.username => {
                self.reply(Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid"), out);
                None
            }
            Ok(Some(credentials)) => {
                self.phase = Phase::AwaitingAuth;
                Some(Event::Authenticate(credentials))
            }
            Err(SaslError::Cancelled) => {
                self.phase = Phase::Command;
                self.reply(Reply::new(501, Enhanced(5, 7, 0), "Authentication cancelled"), out);
                None
            }
            Err(SaslError::Malformed) => {
                self.phase = Phase::Command;
                self.reply(Reply::new(501, Enhanced(5, 5, 2), "Invalid SASL response"), out);
                None
            }
        }
    }

    /// The driver's verdict on the credentials of the last [`Event::Authenticate`].
    pub fn auth_result(&mut self, outcome: AuthOutcome, out: &mut Vec<u8>) {
        self.phase = Phase::Command;
        let reply = match outcome {
            AuthOutcome::Success(user) => {
                self.identity = Some(user);
                Reply::new(235, Enhanced(2, 7, 0), "Authentication successful")
            }
            AuthOutcome::Failed => Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid"),
            AuthOutcome::TemporaryFailure => Reply::new(454, Enhanced(4, 7, 0), "Temporary authentication failure"),
            AuthOutcome::LockedOut => codes::closing("Too many authentication failures, try again later"),
        };
        self.reply(reply, out);
    }
}
