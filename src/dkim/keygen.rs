//! `sluice dkim keygen` and `sluice dkim record`: a key file and the DNS record to publish.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::key;

/// Writes a new key to `out` (default `DOMAIN.SELECTOR.key`; mode 0600; never over an existing
/// file, and fsynced) and returns what to print: the zone line and the config entry.
pub fn keygen(domain: &str, selector: &str, algorithm: &str, bits: usize, out: Option<PathBuf>) -> Result<String, String> {
    check_names(domain, selector)?;
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{domain}.{selector}.key")));
    let (pem, key) = key::generate(algorithm, bits)?;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(describe(&path, domain, selector, &key))
}

/// The record of an existing key file.
pub fn record(path: &Path, domain: &str, selector: &str) -> Result<String, String> {
    check_names(domain, selector)?;
    let key = key::load(path).map_err(|e| e.to_string())?;
    Ok(describe(path, domain, selector, &key))
}

fn check_names(domain: &str, selector: &str) -> Result<(), String> {
    for (what, name) in [("domain", domain), ("selector", selector)] {
        if crate::smtp::address::check_domain(name).is_err() {
            return Err(format!("--{what} {name:?} is not a valid name"));
        }
    }
    Ok(())
}

fn describe(path: &Path, domain: &str, selector: &str, key: &key::Key) -> String {
    let record = key.dns_record();
    format!(
        "# {kind} key in {path}\n# Publish this TXT record:\n{zone}\n# and sign with it (config.yaml):\n# dkim:\n#   sign:\n#     - {{ domain: {domain}, selector: {selector}, key: {path} }}\n",
        kind = key.kind(),
        path = path.display(),
        zone = key::zone_line(selector, domain, &record),
    )
}
