//! AUTH backing: the users file, password verification, and brute-force limits per client IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};

/// `user:hash` lines; `#` comments and blank lines are skipped. Re-read when the file changes.
pub struct UsersFile {
    path: PathBuf,
    state: Mutex<Users>,
    /// Verified against when the user does not exist, so timing does not tell who does.
    dummy_hash: String,
}

struct Users {
    modified: Option<SystemTime>,
    hashes: HashMap<String, String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    /// The users file could not be read.
    Unavailable,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The `user:hash` entries of a users file's text (a later line for the same user wins).
pub fn parse_users(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(u, h)| (u.to_string(), h.to_string()))
        .collect()
}

impl UsersFile {
    pub fn open(path: &Path) -> Result<UsersFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("users file {}: {e}", path.display()))?;
        let hashes = parse_users(&text);
        for (user, hash) in &hashes {
            if let Some(problem) = hash_problem(hash) {
                tracing::warn!(user = %user, file = %path.display(), problem, "password hash not usable; this user cannot log in");
            }
        }
        Ok(UsersFile {
            path: path.to_path_buf(),
            state: Mutex::new(Users { modified: modified(path), hashes }),
            dummy_hash: hash_password("not a real password").map_err(|e| e.to_string())?,
        })
    }

    fn hash_of(&self, user: &str) -> Result<Option<String>, ()> {
        let mut s = self.state.lock().map_err(|_| ())?;
        let now = modified(&self.path);
        if now != s.modified {
            match std::fs::read_to_string(&self.path) {
                Ok(text) => {
                    s.hashes = parse_users(&text);
                    s.modified = now;
                    tracing::info!(file = %self.path.display(), users = s.hashes.len(), "users file reloaded");
                }
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %e, "users file unreadable");
                    return Err(());
                }
            }
        }
        Ok(s.hashes.get(user).cloned())
    }

    /// Checks a password. CPU-heavy (argon2): call it from a blocking thread.
    pub fn verify(&self, user: &str, password: &str) -> Verdict {
        match self.hash_of(user) {
            Err(()) => Verdict::Unavailable,
            Ok(Some(hash)) if check(&hash, password) => Verdict::Valid,
            Ok(Some(_)) => Verdict::Invalid,
            Ok(None) => {
                let _ = check(&self.dummy_hash, password);
                Verdict::Invalid
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Argon2,
    Bcrypt,
    Sha512Crypt,
}

fn scheme(hash: &str) -> Option<Scheme> {
    if hash.starts_with("$argon2") {
        Some(Scheme::Argon2)
    } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
        Some(Scheme::Bcrypt)
    } else if hash.starts_with("$6$") {
        Some(Scheme::Sha512Crypt)
    } else {
        None
    }
}

/// The most memory one argon2 check may take (KiB): RFC 9106's second recommended setting.
/// Checks run one per core at a time, so a hash asking for gigabytes would take the host's
/// memory with a few login attempts.
const MAX_ARGON2_KIB: u32 = 64 * 1024;
const MAX_ARGON2_PASSES: u32 = 16;
const MAX_ARGON2_LANES: u32 = 16;
/// bcrypt cost 15 already takes seconds per check.
const MAX_BCRYPT_COST: u32 = 14;
/// sha512-crypt allows 999,999,999 rounds; 5,000 is the default.
const MAX_SHA512_ROUNDS: u64 = 2_000_000;

/// Why a hash from the users file cannot be used: an unknown scheme, a malformed hash, or a
/// cost so high that checking it is a denial of service. `None`: usable.
pub fn hash_problem(hash: &str) -> Option<&'static str> {
    let Some(scheme) = scheme(hash) else { return Some("unsupported password hash scheme") };
    match scheme {
        Scheme::Argon2 => {
            let Ok(parsed) = PasswordHash::new(hash) else { return Some("malformed argon2 hash") };
            // The numbers are judged before the argon2 crate sees them: its own parameter
            // checks overflow on some (found by the users_file fuzz target).
            for (name, value) in parsed.params.iter() {
                let limit = match name.as_str() {
                    "m" => MAX_ARGON2_KIB,
                    "t" => MAX_ARGON2_PASSES,
                    "p" => MAX_ARGON2_LANES,
                    _ => continue,
                };
                match value.decimal() {
                    Ok(n) if n <= limit => {}
                    Ok(_) => return Some("argon2 cost too high (at most m=65536, t=16, p=16)"),
                    Err(_) => return Some("bad argon2 parameters"),
                }
            }
            if argon2::Params::try_from(&parsed).is_err() {
                return Some("bad argon2 parameters");
            }
            None
        }
        Scheme::Bcrypt => match hash.get(4..6).and_then(|c| c.parse::<u32>().ok()) {
            None => Some("malformed bcrypt hash"),
            Some(cost) if cost > MAX_BCRYPT_COST => Some("bcrypt cost too high (at most 14)"),
            Some(_) => None,
        },
        Scheme::Sha512Crypt => {
            let rounds = hash.strip_prefix("$6$rounds=").map(|r| r.split('$').next().unwrap_or("").parse::<u64>());
            match rounds {
                Some(Err(_)) => Some("malformed sha512-crypt rounds"),
                Some(Ok(n)) if n > MAX_SHA512_ROUNDS => Some("sha512-crypt rounds too high (at most 2000000)"),
                _ => None,
            }
        }
    }
}

fn check(hash: &str, password: &str) -> bool {
    if hash_problem(hash).is_some() {
        return false;
    }
    match scheme(hash) {
        Some(Scheme::Argon2) => PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok()),
        Some(Scheme::Bcrypt) => bcrypt::verify(password, hash).unwrap_or(false),
        Some(Scheme::Sha512Crypt) => sha_crypt::sha512_check(password, hash).is_ok(),
        None => false,
    }
}

/// An argon2id hash (the argon2 crate's defaults) for the users file.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Failed AUTH attempts per client IP and per user name; an IP or a name with `max`
/// failures within `window` is locked out for `lockout`. An attempt counts as a failure from
/// the moment it starts (so a hundred parallel guesses are not all checked before the first
/// fails), and a success gives back only its own count: one valid login clears nothing that
/// others (or guesses at other names) ran up.
pub struct FailureTracker {
    max: u32,
    window: Duration,
    lockout: Duration,
    entries: Mutex<HashMap<Key, Failures>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User(String),
}

struct Failures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// One attempt under way, already counted against its IP and user name.
#[derive(Debug)]
pub struct Attempt {
    keys: [Key; 2],
}

impl FailureTracker {
    pub fn new(max: u32, window: Duration, lockout: Duration) -> Self {
        FailureTracker { max, window, lockout, entries: Mutex::new(HashMap::new()) }
    }

    pub fn is_locked(&self, ip: IpAddr, now: Instant) -> bool {
        let entries = self.entries.lock().expect("failure lock");
        entries.get(&Key::Ip(ip)).and_then(|e| e.locked_until).is_some_and(|until| now < until)
    }

    /// Starts an attempt for `user` from `ip`; `None` when either is locked out, or already
    /// has `max` attempts failed or under way (the password is then not checked at all).
    pub fn begin(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Attempt> {
        let keys = [Key::Ip(ip), Key::User(user.to_lowercase())];
        let mut entries = self.entries.lock().expect("failure lock");
        if entries.len() > 100_000 {
            entries.retain(|_, e| e.locked_until.is_some_and(|u| now < u) || now.duration_since(e.since) < self.window);
        }
        for key in &keys {
            let e = entries.entry(key.clone()).or_insert(Failures { count: 0, since: now, locked_until: None });
            if e.locked_until.is_some_and(|u| now < u) {
                return None;
            }
            if now.duration_since(e.since) >= self.window || e.locked_until.is_some() {
                *e = Failures { count: 0, since: now, locked_until: None };
            }
            if e.count >= self.max {
                return None;
            }
        }
        for key in &keys {
            if let Some(e) = entries.get_mut(key) {
                e.count += 1;
            }
        }
        Some(Attempt { keys })
    }

    /// The attempt logged in: its own count is given back.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut entries = self.entries.lock().expect("failure lock");
        for key in attempt.keys {
            if let Some(e) = entries.get_mut(&key) {
                e.count = e.count.saturating_sub(1);
            }
        }
    }

    /// The attempt failed (its count stays); true when this locks its IP or user name out.
    pub fn failed(&self, attempt: Attempt, now: Instant) -> bool {
        let mut entries = self.entries.lock().expect("failure lock");
        let mut locked = false;
        for key in attempt.keys {
            if let Some(e) = entries.get_mut(&key)
                && e.count >= self.max
                && e.locked_until.is_none()
            {
                e.locked_until = Some(now + self.lockout);
                locked = true;
            }
        }
        locked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_argon2id_bcrypt_and_sha512_crypt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let argon = hash_password("pw-argon").unwrap();
        assert!(argon.starts_with("$argon2id$"));
        let bcrypt_hash = bcrypt::hash("pw-bcrypt", 4).unwrap();
        // The `$6$` format that mkpasswd -m sha-512 writes.
        let sha = sha_crypt::sha512_simple("pw-sha", &sha_crypt::Sha512Params::new(5000).unwrap()).unwrap();
        std::fs::write(&path, format!("# users\nalice:{argon}\nbob:{bcrypt_hash}\ncarol:{sha}\ndave:plaintext\n")).unwrap();
        let users = UsersFile::open(&path).unwrap();
        assert_eq!(users.verify("alice", "pw-argon"), Verdict::Valid);
        assert_eq!(users.verify("alice", "wrong"), Verdict::Invalid);
        assert_eq!(users.verify("bob", "pw-bcrypt"), Verdict::Valid);
        assert_eq!(users.verify("carol", "pw-sha"), Verdict::Valid);
        assert_eq!(users.verify("dave", "plaintext"), Verdict::Invalid, "unhashed lines never log in");
        assert_eq!(users.verify("nobody", "pw-argon"), Verdict::Invalid);
    }

    #[test]
    fn hashes_that_cost_too_much_to_check_are_refused_unchecked() {
        // A hash asking for 4 GiB per check: a handful of login attempts would take the host.
        let greedy = "$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        assert!(hash_problem(greedy).is_some_and(|p| p.contains("cost")));
        assert!(!check(greedy, "anything"));
        assert_eq!(hash_problem(&hash_password("pw").unwrap()), None);
        assert!(hash_problem("$2b$31$abcdefghijklmnopqrstuuLKn1r0Cj7M4fVhYzZqD0LnkqJxG3E6").is_some_and(|p| p.contains("bcrypt cost")));
        assert_eq!(hash_problem(&bcrypt::hash("pw", 4).unwrap()), None);
        assert!(hash_problem("$6$rounds=999999999$salt$x").is_some_and(|p| p.contains("rounds")));
        // Found by the users_file fuzz target: the argon2 crate's checks overflowed on these.
        assert!(hash_problem("$argon2d$v=19$p=192284").is_some());
        assert!(hash_problem("$argon2id$v=19$m=65536,t=3,p=4294967295$c29tZXNhbHQ$AAAA").is_some());
        assert!(hash_problem("$6$rounds=lots$salt$x").is_some());
        assert!(hash_problem("plaintext").is_some());
        assert!(hash_problem("$argon2id$v=19$m=x,t=1,p=1$c29tZXNhbHQ$AAAA").is_some());
    }

    #[test]
    fn users_file_changes_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "").unwrap();
        let users = UsersFile::open(&path).unwrap();
        assert_eq!(users.verify("erin", "pw"), Verdict::Invalid);
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, format!("erin:{}\n", hash_password("pw").unwrap())).unwrap();
        assert_eq!(users.verify("erin", "pw"), Verdict::Valid);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(users.verify("erin", "pw"), Verdict::Unavailable);
    }

    #[test]
    fn locks_out_after_max_failures_within_the_window() {
        let t = FailureTracker::new(3, Duration::from_secs(60), Duration::from_secs(300));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let fail = |ip: IpAddr, user: &str, at: Instant| t.begin(ip, user, at).map(|a| t.failed(a, at));
        assert_eq!(fail(ip, "a", t0), Some(false));
        assert_eq!(fail(ip, "b", t0 + Duration::from_secs(1)), Some(false));
        assert_eq!(fail(ip, "c", t0 + Duration::from_secs(2)), Some(true));
        assert!(t.is_locked(ip, t0 + Duration::from_secs(100)));
        assert!(t.begin(ip, "d", t0 + Duration::from_secs(100)).is_none());
        assert!(!t.is_locked(ip, t0 + Duration::from_secs(303)));
        assert!(!t.is_locked("192.0.2.2".parse().unwrap(), t0));
        // Failures spread wider than the window never lock.
        let other: IpAddr = "192.0.2.3".parse().unwrap();
        for i in 0..10 {
            assert_eq!(fail(other, &format!("u{i}"), t0 + Duration::from_secs(61 * i)), Some(false));
        }
    }

    #[test]
    fn attempts_count_when_they_start_and_a_success_gives_back_only_its_own() {
        let t = FailureTracker::new(3, Duration::from_secs(60), Duration::from_secs(300));
        let (ip, now) = ("192.0.2.1".parse().unwrap(), Instant::now());
        // Three guesses under way at once: a fourth is refused before any is checked.
        let pending: Vec<Attempt> = (0..3).map(|i| t.begin(ip, &format!("bob{i}"), now).unwrap()).collect();
        assert!(t.begin(ip, "bob9", now).is_none());
        let mut pending = pending.into_iter();
        // One of them was a real login: it gives back its count, the others' stay.
        t.succeeded(pending.next().unwrap());
        assert!(!t.failed(pending.next().unwrap(), now));
        let alice = t.begin(ip, "alice", now).unwrap();
        t.succeeded(alice);
        assert!(!t.failed(pending.next().unwrap(), now), "two failures so far");
        let third = t.begin(ip, "x", now).unwrap();
        assert!(t.failed(third, now), "the third failure locks the address; the login cleared none");
        assert!(t.is_locked(ip, now));
        // A name guessed at from many addresses is locked on its own.
        let t = FailureTracker::new(2, Duration::from_secs(60), Duration::from_secs(300));
        for i in 1..=2 {
            let a = t.begin(format!("198.51.100.{i}").parse().unwrap(), "Carol", now).unwrap();
            t.failed(a, now);
        }
        assert!(t.begin("198.51.100.9".parse().unwrap(), "carol", now).is_none(), "the name is locked");
        assert!(t.begin("198.51.100.9".parse().unwrap(), "dave", now).is_some(), "that address is not");
    }
}
