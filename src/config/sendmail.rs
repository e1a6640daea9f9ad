//! The `sendmail` section: the local submission socket and who may set a return path.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendmailConfig {
    /// The daemon's local submission socket (any local user may connect; the daemon reads
    /// the caller's uid from it).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// System users whose `-f` return path is honoured; everyone else's mail goes out with
    /// their own identity (user@hostname) as return path.
    #[serde(default = "default_trusted")]
    pub trusted_users: Vec<String>,
}

impl Default for SendmailConfig {
    fn default() -> Self {
        SendmailConfig { socket: default_socket(), trusted_users: default_trusted() }
    }
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/sluice/sendmail.sock")
}

fn default_trusted() -> Vec<String> {
    vec!["root".into()]
}
