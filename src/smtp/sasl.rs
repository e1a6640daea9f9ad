//! SASL PLAIN (RFC 4616) and LOGIN decoding for AUTH (RFC 4954), without I/O.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A password that never shows up in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Authorization identity; must be empty or equal to `username` (no proxy auth).
    pub authzid: String,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (501 5.7.0).
    Cancelled,
    /// Not base64, not UTF-8, or not the mechanism's shape (501 5.5.2).
    Malformed,
}

/// Decodes one base64 response line; `*` cancels and `=` is an empty response (RFC 4954 4).
pub fn decode_line(line: &str) -> Result<Vec<u8>, SaslError> {
    match line.trim() {
        "*" => Err(SaslError::Cancelled),
        "=" => Ok(Vec::new()),
        text => STANDARD.decode(text).map_err(|_| SaslError::Malformed),
    }
}

/// PLAIN: `authzid NUL authcid NUL passwd`.
pub fn decode_plain(line: &str) -> Result<Credentials, SaslError> {
    let raw = decode_line(line)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(pass), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let username = text(user)?;
    if username.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials { authzid: text(authzid)?, username, password: Secret(text(pass)?) })
}

/// One LOGIN response (user name or password), as text.
pub fn decode_login(line: &str) -> Result<String, SaslError> {
    String::from_utf8(decode_line(line)?).map_err(|_| SaslError::Malformed)
}

pub fn encode(text: &str) -> String {
    STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plain_table() {
        let c = decode_plain(&encode("\0alice\0s3cret")).unwrap();
        assert_eq!((c.authzid.as_str(), c.username.as_str(), c.password.expose()), ("", "alice", "s3cret"));
        assert_eq!(decode_plain("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_plain("not base64!"), Err(SaslError::Malformed));
        assert_eq!(decode_plain(&encode("alice\0s3cret")), Err(SaslError::Malformed));
        assert_eq!(decode_plain(&encode("\0\0pw")), Err(SaslError::Malformed));
        assert_eq!(decode_plain(&encode("a\0b\0c\0d")), Err(SaslError::Malformed));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let c = decode_plain(&encode("\0bob\0hunter2")).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn login_lines() {
        assert_eq!(decode_login(&encode("bob")), Ok("bob".into()));
        assert_eq!(decode_login("="), Ok(String::new()));
        assert_eq!(decode_login(" * "), Err(SaslError::Cancelled));
    }
}
