//! `accounting`: the JSON Lines stream of delivery events (`crate::accounting`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountingConfig {
    /// The file records are appended to; without it there is no accounting stream.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Rotated (`path.1`, `path.2`, ...) before a record would take it past this many octets.
    #[serde(default = "default_max_size")]
    pub max_size: u64,
    /// Rotated files kept; the oldest is removed. 0 keeps none.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        AccountingConfig { path: None, max_size: default_max_size(), keep: default_keep() }
    }
}

fn default_max_size() -> u64 {
    100 * 1024 * 1024
}

fn default_keep() -> u32 {
    10
}

impl AccountingConfig {
    /// What the writer needs, or `None` when the stream is off.
    pub fn settings(&self) -> Option<crate::accounting::Settings> {
        let path = self.path.clone()?;
        Some(crate::accounting::Settings { path, max_size: self.max_size, keep: self.keep })
    }
}
