//! API keys: a file of `NAME:SCOPES:SHA256-HEX` lines, read with each config generation. A key
//! is 32 random octets, so a fast hash is enough (no password to guess): a request's key is
//! found by the SHA-256 of what it presents, in a table, never compared octet by octet.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes {
    /// Send mail (`POST /api/v1/messages`).
    pub inject: bool,
    /// The queue endpoints.
    pub admin: bool,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub scopes: Scopes,
}

/// The keys of one generation.
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], ApiKey>,
}

impl ApiKeys {
    /// Reads the file; an error names the file and line.
    pub fn load(path: &Path) -> Result<ApiKeys, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("api.keys_file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("api.keys_file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let mut by_hash = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |why: &str| format!("line {}: {why}", i + 1);
            let mut parts = line.split(':');
            let (Some(name), Some(scopes), Some(hash), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
                return Err(at("expected NAME:SCOPES:SHA256-HEX"));
            };
            if !valid_name(name) {
                return Err(at("a key name is letters, digits, '.', '-' and '_'"));
            }
            let mut parsed = Scopes { inject: false, admin: false };
            for scope in scopes.split(',') {
                match scope.trim() {
                    "inject" => parsed.inject = true,
                    "admin" => parsed.admin = true,
                    other => return Err(at(&format!("unknown scope {other:?} (inject, admin)"))),
                }
            }
            let hash = hex32(hash).ok_or_else(|| at("the hash is 64 hex digits (the SHA-256 of the key)"))?;
            if !names.insert(name.to_string()) {
                return Err(at(&format!("key {name:?} is listed twice")));
            }
            by_hash.insert(hash, ApiKey { name: name.to_string(), scopes: parsed });
        }
        Ok(ApiKeys { by_hash })
    }

    /// The key whose secret this is.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        self.by_hash.get(&<[u8; 32]>::from(Sha256::digest(presented.as_bytes())))
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Names that go into logs, metrics labels and Received fields as they are.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// `sluice api-key NAME`: a new key and its line for the keys file.
pub fn generate(name: &str, scopes: &str) -> Result<(String, String), String> {
    if !valid_name(name) {
        return Err(format!("{name:?}: a key name is letters, digits, '.', '-' and '_' (64 at most)"));
    }
    let line_scopes: Vec<&str> = scopes.split(',').map(str::trim).collect();
    if let Some(bad) = line_scopes.iter().find(|s| !matches!(**s, "inject" | "admin")) {
        return Err(format!("unknown scope {bad:?} (inject, admin)"));
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).map_err(|_| "no randomness for the key")?;
    let key = format!("sk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    let hash: String = Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    Ok((key, format!("{name}:{}:{hash}", line_scopes.join(","))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_found_by_its_line_and_nothing_else_is() {
        let (key, line) = generate("shop", "inject").unwrap();
        let (other, _) = generate("x", "admin").unwrap();
        let keys = ApiKeys::parse(&format!("# keys\n{line}\n")).unwrap();
        let found = keys.find(&key).unwrap();
        assert_eq!((found.name.as_str(), found.scopes), ("shop", Scopes { inject: true, admin: false }));
        assert!(keys.find(&other).is_none());
        assert!(keys.find("").is_none());
        assert!(keys.find(&key[..key.len() - 1]).is_none());
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        let hash = "0".repeat(64);
        for (text, why) in [
            (format!("a:inject:{hash}\nb:write:{hash}\n"), "line 2: unknown scope \"write\""),
            ("a:inject:1234\n".into(), "line 1: the hash is 64 hex digits"),
            (format!("a b:inject:{hash}\n"), "line 1: a key name"),
            (format!("a:inject:{hash}\n\na:admin:{}\n", "1".repeat(64)), "line 3: key \"a\" is listed twice"),
            ("a:inject\n".into(), "line 1: expected NAME:SCOPES:SHA256-HEX"),
        ] {
            let err = ApiKeys::parse(&text).err().unwrap_or_else(|| panic!("{text:?} parsed"));
            assert!(err.starts_with(why), "{err} (wanted {why})");
        }
        assert!(generate("bad name", "inject").is_err());
        assert!(generate("ok", "inject,root").is_err());
    }
}
