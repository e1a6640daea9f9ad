//! MTA-STS (RFC 8461), the pure part: the `_mta-sts` TXT record, the policy file fetched from
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, and whether an MX host name matches a
//! policy. What is fetched, cached and enforced uses these; nothing here does I/O.

/// The `_mta-sts.DOMAIN` TXT record: `v=STSv1; id=...;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Changes whenever the policy does (1 to 32 letters and digits).
    pub id: String,
}

/// Why a TXT answer or a policy file is not one (the domain is then treated as having none,
/// or the cached policy is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsError {
    /// No TXT record starts with `v=STSv1`.
    NoRecord,
    /// More than one does (RFC 8461 3.1: then there is no policy).
    SeveralRecords,
    /// The named field is missing or its value is wrong.
    Field(&'static str, String),
}

impl std::fmt::Display for StsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StsError::NoRecord => f.write_str("no v=STSv1 TXT record"),
            StsError::SeveralRecords => f.write_str("more than one v=STSv1 TXT record"),
            StsError::Field(name, why) => write!(f, "{name}: {why}"),
        }
    }
}

impl std::error::Error for StsError {}

/// Picks the MTA-STS record among a name's TXT strings (each already joined from its
/// character-strings). Records that do not start with `v=STSv1` are someone else's.
pub fn parse_record<'a>(txts: impl IntoIterator<Item = &'a str>) -> Result<Record, StsError> {
    let mut found = txts.into_iter().filter(|t| t.trim_start().starts_with("v=STSv1"));
    let text = found.next().ok_or(StsError::NoRecord)?;
    if found.next().is_some() {
        return Err(StsError::SeveralRecords);
    }
    let mut fields = text.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return Err(StsError::Field("v", "the record must begin with v=STSv1".into()));
    }
    let mut id = None;
    for field in fields {
        let Some((name, value)) = field.split_once('=') else {
            return Err(StsError::Field("record", format!("{field:?} is not NAME=VALUE")));
        };
        // Other extension fields are allowed and ignored (RFC 8461 3.1).
        if name.trim() == "id" && id.is_none() {
            id = Some(value.trim().to_string());
        }
    }
    let id = id.ok_or_else(|| StsError::Field("id", "missing".into()))?;
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StsError::Field("id", format!("{id:?} is not 1 to 32 letters and digits")));
    }
    Ok(Record { id })
}

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Deliver only to matching MX hosts over authenticated TLS.
    Enforce,
    /// Deliver as before; report what enforce would have refused.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    /// As the policy file writes it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// MX host patterns: a name, or `*.` and a name (one leftmost label), lower case.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

/// A policy with more mx lines than this is refused: real ones have a handful, and each
/// is kept and matched at every attempt.
pub const MAX_MX_PATTERNS: usize = 64;
/// RFC 8461 3.2: max_age is at most about a year.
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
/// The policy file is read up to this size; a longer one is refused (RFC 8461 3.3 suggests
/// 64 KiB).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;

/// Parses a policy file (`key: value` lines, CRLF or LF). Unknown keys are ignored; a key
/// other than `mx` given twice keeps its first value.
pub fn parse_policy(text: &str) -> Result<Policy, StsError> {
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(StsError::Field("policy", format!("{line:?} is not KEY: VALUE")));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "version" if version.is_none() => version = Some(value.to_string()),
            "mode" if mode.is_none() => mode = Some(value.to_string()),
            "max_age" if max_age.is_none() => max_age = Some(value.to_string()),
            "mx" if mx.len() >= MAX_MX_PATTERNS => {
                return Err(StsError::Field("mx", format!("more than {MAX_MX_PATTERNS} patterns")));
            }
            "mx" => mx.push(mx_pattern(value)?),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err(StsError::Field("version", format!("{:?}, not STSv1", version.unwrap_or_default())));
    }
    let mode = match mode.as_deref() {
        Some("enforce") => Mode::Enforce,
        Some("testing") => Mode::Testing,
        Some("none") => Mode::None,
        other => return Err(StsError::Field("mode", format!("{:?} is not enforce, testing or none", other.unwrap_or("")))),
    };
    let max_age = max_age.ok_or_else(|| StsError::Field("max_age", "missing".into()))?;
    let max_age = match max_age.parse::<u64>() {
        Ok(n) => n.min(MAX_AGE_LIMIT),
        // Ten digits at most in the ABNF; a longer run of digits is still "a long time".
        Err(_) if !max_age.is_empty() && max_age.bytes().all(|b| b.is_ascii_digit()) => MAX_AGE_LIMIT,
        Err(_) => return Err(StsError::Field("max_age", format!("{max_age:?} is not a number of seconds"))),
    };
    if mode != Mode::None && mx.is_empty() {
        return Err(StsError::Field("mx", "an enforce or testing policy names at least one MX pattern".into()));
    }
    Ok(Policy { mode, mx, max_age })
}

fn mx_pattern(value: &str) -> Result<String, StsError> {
    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.contains('.') || !name.split('.').all(label_ok) {
        return Err(StsError::Field("mx", format!("{value:?} is not a host name or *.name")));
    }
    Ok(pattern)
}

impl Policy {
    /// Whether the MX host `host` is one the policy allows: the same name, or for `*.name`
    /// a name with exactly one more label on the left (RFC 8461 4.1). Case is ignored.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(parent) => host.split_once('.').is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
            None => *p == host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_txt_record_is_the_one_starting_v_stsv1_and_needs_a_good_id() {
        assert_eq!(parse_record(["v=spf1 -all", "v=STSv1; id=20160831085700Z;"]), Ok(Record { id: "20160831085700Z".into() }));
        assert_eq!(parse_record(["v=STSv1;id=abc ; ext=1"]).unwrap().id, "abc");
        assert_eq!(parse_record(["v=spf1 -all"]), Err(StsError::NoRecord));
        assert_eq!(parse_record(["v=STSv1; id=a;", "v=STSv1; id=b;"]), Err(StsError::SeveralRecords));
        assert!(matches!(parse_record(["v=STSv1;"]), Err(StsError::Field("id", _))));
        assert!(matches!(parse_record(["v=STSv1; id=has-dash;"]), Err(StsError::Field("id", _))));
        assert!(matches!(parse_record([format!("v=STSv1; id={};", "a".repeat(33)).as_str()]), Err(StsError::Field("id", _))));
        assert!(matches!(parse_record(["v=STSv1; junk"]), Err(StsError::Field("record", _))));
    }

    #[test]
    fn a_policy_file_parses_as_rfc_8461_writes_it() {
        let p = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n").unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net", "backupmx.example.com"]);
        assert_eq!(p.max_age, 604800);
        // LF alone, unknown keys, a repeated key keeps its first value, a huge max_age is capped.
        let p = parse_policy("version: STSv1\nmode: testing\nmode: enforce\nfuture: 1\nmx: MX.Example.COM.\nmax_age: 99999999999999\n")
            .unwrap();
        assert_eq!((p.mode, p.max_age, p.mx[0].as_str()), (Mode::Testing, MAX_AGE_LIMIT, "mx.example.com"));
        assert_eq!(parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").unwrap().mode, Mode::None);
    }

    #[test]
    fn a_wrong_policy_file_is_refused_naming_the_field() {
        let field = |text: &str| match parse_policy(text) {
            Err(StsError::Field(name, _)) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(field("mode: enforce\nmx: a.test\nmax_age: 1\n"), "version");
        assert_eq!(field("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n"), "version");
        assert_eq!(field("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n"), "mode");
        assert_eq!(field("version: STSv1\nmode: enforce\nmx: a.test\n"), "max_age");
        assert_eq!(field("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -5\n"), "max_age");
        assert_eq!(field("version: STSv1\nmode: enforce\nmax_age: 5\n"), "mx");
        assert_eq!(field("version: STSv1\nmode: enforce\nmx: *.*.a.test\nmax_age: 5\n"), "mx");
        assert_eq!(field("version: STSv1\nmode: enforce\nmx: localhost\nmax_age: 5\n"), "mx");
        assert_eq!(field("<html>not a policy</html>\n"), "policy");
        let many: String = (0..=MAX_MX_PATTERNS).map(|i| format!("mx: mx{i}.a.test\n")).collect();
        assert_eq!(field(&format!("version: STSv1\nmode: enforce\n{many}max_age: 5\n")), "mx");
    }

    #[test]
    fn a_wildcard_matches_one_leftmost_label_only() {
        let p = Policy { mode: Mode::Enforce, mx: vec!["mail.example.com".into(), "*.example.net".into()], max_age: 1 };
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MAIL.example.com."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("example.net"), "the wildcard needs a label");
        assert!(!p.allows("a.b.example.net"), "only one label");
        assert!(!p.allows("evilexample.net"));
        assert!(!p.allows("mail.example.com.evil.test"));
        assert!(!p.allows(".example.net"));
    }
}
