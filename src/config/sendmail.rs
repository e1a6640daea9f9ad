//! The `sendmail` section: the local submission socket and who may set a return path.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Where `sluice sendmail` leaves a message (fsynced) when the daemon does not answer;
    /// the daemon takes such files in at start and every few seconds. The Postfix postdrop
    /// model: mode 1730, group `sluicedrop`, the binary setgid to that group.
    #[serde(default = "default_maildrop")]
    pub maildrop: PathBuf,
}

impl Default for SendmailConfig {
    fn default() -> Self {
        SendmailConfig { socket: default_socket(), trusted_users: default_trusted(), maildrop: default_maildrop() }
    }
}

fn default_maildrop() -> PathBuf {
    PathBuf::from("/var/spool/sluice/maildrop")
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/sluice/sendmail.sock")
}

fn default_trusted() -> Vec<String> {
    vec!["root".into()]
}
