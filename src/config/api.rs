//! The HTTP injection API: its listeners (`http_listeners`) and the `api` section.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListener {
    pub address: SocketAddr,
    /// HTTPS with the `tls` section's certificate; plain HTTP is allowed on loopback only,
    /// as a bearer key in plain text is anyone's who can read the network.
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// API keys, one per line: `NAME:SCOPES:SHA256-HEX` (scopes `inject`, `admin`, comma
    /// separated; `sluice api-key NAME` prints a key and its line). Read again on reload.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// The largest request body accepted, in octets (413 above it).
    #[serde(default = "default_max_request_size")]
    pub max_request_size: u64,
    /// Recipients of one request at most, all its messages together (422 above it).
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// How long the answer to a request with an `Idempotency-Key` header is kept (durably, in
    /// the spool): a retry with the same key within it gets that answer, nothing is sent twice.
    #[serde(default = "default_idempotency_ttl")]
    pub idempotency_ttl: super::HumanDuration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            keys_file: None,
            max_request_size: default_max_request_size(),
            max_recipients: default_max_recipients(),
            idempotency_ttl: default_idempotency_ttl(),
        }
    }
}

fn default_max_request_size() -> u64 {
    // A 25 MiB message grows by a third in base64 inside JSON.
    36 * 1024 * 1024
}

fn default_idempotency_ttl() -> super::HumanDuration {
    super::HumanDuration(std::time::Duration::from_secs(24 * 3600))
}

fn default_max_recipients() -> usize {
    1000
}

impl super::Config {
    /// The checks of `http_listeners` and `api`: (key, message).
    pub(super) fn check_api(&self) -> Result<(), (String, String)> {
        for (i, l) in self.http_listeners.iter().enumerate() {
            if l.tls && self.tls.is_none() {
                return Err((format!("http_listeners[{i}].tls"), "needs a tls section".into()));
            }
            if !l.tls && !l.address.ip().is_loopback() {
                let msg = format!("plain HTTP on {} would carry API keys in clear text; set tls: true, or listen on loopback", l.address);
                return Err((format!("http_listeners[{i}].address"), msg));
            }
            let twice = l.address.port() != 0
                && (self.http_listeners[..i].iter().any(|o| o.address == l.address)
                    || self.listeners.iter().any(|o| o.address == l.address));
            if twice {
                return Err((format!("http_listeners[{i}].address"), format!("address {} is already used by another listener", l.address)));
            }
        }
        match &self.api.keys_file {
            None if !self.http_listeners.is_empty() => {
                return Err(("api.keys_file".into(), "http_listeners need a keys file (sluice api-key NAME prints a line for it)".into()));
            }
            Some(path) if !path.is_file() => {
                return Err(("api.keys_file".into(), format!("file {} does not exist", path.display())));
            }
            // Read as the daemon reads it, so check-config finds the bad line before a reload does.
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ("api.keys_file".to_string(), format!("{}: {e}", path.display())))?;
                crate::http::keys::ApiKeys::parse(&text).map_err(|e| ("api.keys_file".to_string(), format!("{}: {e}", path.display())))?;
            }
            None => {}
        }
        if self.api.max_recipients == 0 || self.api.max_request_size < 1024 {
            return Err(("api".into(), "max_recipients must be positive and max_request_size at least 1024".into()));
        }
        if self.api.idempotency_ttl.0 < std::time::Duration::from_secs(60) {
            return Err(("api.idempotency_ttl".into(), "must be at least 1min (a client's retries come later than that)".into()));
        }
        Ok(())
    }
}
