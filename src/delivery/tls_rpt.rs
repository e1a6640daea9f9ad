//! TLS-RPT (RFC 8460), the pure part: the `_smtp._tls` TXT record naming where reports go,
//! and the aggregate report's JSON (section 4), counted per policy and failure. Sending it
//! (mail through the queue, or an HTTPS POST) and keeping the daily counts use these
//! (`crate::tlsrpt`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a domain wants its reports (`rua=`), in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportUri {
    Mailto(String),
    Https(String),
}

/// Parses the `_smtp._tls.DOMAIN` TXT strings: the one record starting `v=TLSRPTv1` (none,
/// or more than one, is no record), its `rua` destinations; unknown schemes are skipped.
pub fn parse_record<'a>(txts: impl IntoIterator<Item = &'a str>) -> Result<Vec<ReportUri>, String> {
    let mut found = txts.into_iter().filter(|t| t.trim_start().starts_with("v=TLSRPTv1"));
    let text = found.next().ok_or("no v=TLSRPTv1 TXT record")?;
    if found.next().is_some() {
        return Err("more than one v=TLSRPTv1 TXT record".into());
    }
    let mut fields = text.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=TLSRPTv1") {
        return Err("the record must begin with v=TLSRPTv1".into());
    }
    let rua = fields.find_map(|f| f.strip_prefix("rua=")).ok_or("the record has no rua")?;
    let uris: Vec<ReportUri> = rua
        .split(',')
        .map(str::trim)
        .filter_map(|u| {
            // A mailto: URI may carry ?headers, which reports do not use.
            if let Some(address) = u.strip_prefix("mailto:") {
                let address = address.split('?').next().unwrap_or("");
                address.contains('@').then(|| ReportUri::Mailto(address.to_string()))
            } else if u.starts_with("https://") && u.len() > "https://".len() {
                Some(ReportUri::Https(u.to_string()))
            } else {
                None
            }
        })
        .collect();
    if uris.is_empty() {
        return Err(format!("rua={rua:?} names no mailto: or https: destination"));
    }
    Ok(uris)
}

/// The policy a session was under (RFC 8460 4.4 `policy-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    Tlsa,
    Sts,
    NoPolicyFound,
}

impl ResultType {
    /// As the report writes it.
    pub fn name(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

/// Why a session failed (RFC 8460 4.3 result types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

/// A policy as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    #[serde(rename = "policy-type")]
    pub kind: PolicyType,
    /// The policy text, a line each (MTA-STS) or the TLSA records (DANE); empty without one.
    #[serde(rename = "policy-string", default, skip_serializing_if = "Vec::is_empty")]
    pub text: Vec<String>,
    #[serde(rename = "policy-domain")]
    pub domain: String,
    #[serde(rename = "mx-host", default, skip_serializing_if = "Vec::is_empty")]
    pub mx_hosts: Vec<String>,
}

/// One kind of failure with one MX host, counted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Failure {
    pub result: ResultType,
    pub sending_ip: String,
    pub receiving_mx: String,
    pub receiving_ip: Option<String>,
    /// Free text, such as the TLS alert or verifier's reason.
    pub reason: Option<String>,
}

/// Policies counted for one domain in one period at most.
pub const MAX_POLICIES: usize = 8;
/// Kinds of failure (result, hosts, reason) counted for one policy at most.
pub const MAX_FAILURE_KINDS: usize = 100;

/// A day's counts for one reporting domain, by policy.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    by_policy: BTreeMap<PolicyKey, (u64, BTreeMap<Failure, u64>)>,
}

/// One policy's counts as kept: successes and each failure's count.
type KeptPolicy = (PolicyKey, u64, Vec<(Failure, u64)>);

/// Counts as kept across a restart: JSON maps want string keys, so entries in a list.
#[derive(Serialize, Deserialize)]
pub struct KeptCounts(Vec<KeptPolicy>);

impl From<&Counts> for KeptCounts {
    fn from(c: &Counts) -> Self {
        KeptCounts(c.by_policy.iter().map(|(k, (n, f))| (k.clone(), *n, f.iter().map(|(f, n)| (f.clone(), *n)).collect())).collect())
    }
}

impl From<KeptCounts> for Counts {
    fn from(k: KeptCounts) -> Self {
        Counts { by_policy: k.0.into_iter().map(|(key, n, f)| (key, (n, f.into_iter().collect()))).collect() }
    }
}

impl Counts {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: Counts) {
        for (key, (n, failures)) in other.by_policy {
            let entry = self.by_policy.entry(key).or_default();
            entry.0 += n;
            for (f, m) in failures {
                *entry.1.entry(f).or_default() += m;
            }
        }
    }

    /// The entry for `policy`, unless the domain already has `MAX_POLICIES` others (a domain
    /// changing its policy at every message would otherwise grow without bound).
    fn entry(&mut self, policy: &PolicyKey) -> Option<&mut (u64, BTreeMap<Failure, u64>)> {
        if self.by_policy.len() >= MAX_POLICIES && !self.by_policy.contains_key(policy) {
            return None;
        }
        Some(self.by_policy.entry(policy.clone()).or_default())
    }

    /// Counts a successful session; false when it could not be counted (see `entry`).
    pub fn success(&mut self, policy: &PolicyKey) -> bool {
        self.entry(policy).map(|e| e.0 += 1).is_some()
    }

    /// Counts a failed session. Past `MAX_FAILURE_KINDS` kinds for one policy, a new kind is
    /// counted without its reason, or not at all when that kind is new too (false).
    pub fn failure(&mut self, policy: &PolicyKey, mut failure: Failure) -> bool {
        let Some((_, failures)) = self.entry(policy) else { return false };
        if failures.len() >= MAX_FAILURE_KINDS && !failures.contains_key(&failure) {
            failure.reason = None;
            if !failures.contains_key(&failure) {
                return false;
            }
        }
        *failures.entry(failure).or_default() += 1;
        true
    }

    pub fn is_empty(&self) -> bool {
        self.by_policy.is_empty()
    }

    /// The aggregate report (RFC 8460 4.4) for the period from `start` to `end` (unix
    /// seconds, both included: a UTC day is `start` to `start + 86399`).
    pub fn report(&self, organization: &str, contact: &str, report_id: &str, start: u64, end: u64) -> Report {
        let policies = self
            .by_policy
            .iter()
            .map(|(policy, (successes, failures))| PolicyReport {
                policy: policy.clone(),
                summary: Summary { successes: *successes, failures: failures.values().sum() },
                failure_details: failures
                    .iter()
                    .map(|(f, n)| FailureDetail {
                        result_type: f.result,
                        sending_mta_ip: f.sending_ip.clone(),
                        receiving_mx_hostname: f.receiving_mx.clone(),
                        receiving_ip: f.receiving_ip.clone(),
                        failed_session_count: *n,
                        failure_reason_code: f.reason.clone(),
                    })
                    .collect(),
            })
            .collect();
        Report {
            organization_name: organization.to_string(),
            date_range: DateRange { start: rfc3339(start), end: rfc3339(end) },
            contact_info: contact.to_string(),
            report_id: report_id.to_string(),
            policies,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub organization_name: String,
    pub date_range: DateRange,
    pub contact_info: String,
    pub report_id: String,
    pub policies: Vec<PolicyReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DateRange {
    #[serde(rename = "start-datetime")]
    pub start: String,
    #[serde(rename = "end-datetime")]
    pub end: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    pub policy: PolicyKey,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failure_details: Vec<FailureDetail>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    #[serde(rename = "total-successful-session-count")]
    pub successes: u64,
    #[serde(rename = "total-failure-session-count")]
    pub failures: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureDetail {
    pub result_type: ResultType,
    pub sending_mta_ip: String,
    pub receiving_mx_hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<String>,
    pub failed_session_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason_code: Option<String>,
}

/// `2016-04-01T00:00:00Z`.
fn rfc3339(unix: u64) -> String {
    let (y, m, d) = crate::message::date::civil_from_days((unix / 86_400) as i64);
    let s = unix % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_names_mailto_and_https_destinations() {
        let uris = parse_record(["v=TLSRPTv1; rua=mailto:reports@example.com,https://reporting.example.com/v1/tlsrpt"]).unwrap();
        assert_eq!(
            uris,
            [ReportUri::Mailto("reports@example.com".into()), ReportUri::Https("https://reporting.example.com/v1/tlsrpt".into())]
        );
        assert_eq!(parse_record(["v=TLSRPTv1;rua=mailto:a@b.test?subject=x"]).unwrap(), [ReportUri::Mailto("a@b.test".into())]);
        assert!(parse_record(["v=spf1 -all"]).is_err());
        assert!(parse_record(["v=TLSRPTv1; rua=mailto:a@b.test", "v=TLSRPTv1; rua=mailto:c@d.test"]).is_err());
        assert!(parse_record(["v=TLSRPTv1; rua=http://insecure.test/"]).is_err(), "plain http is no destination");
        assert!(parse_record(["v=TLSRPTv1;"]).is_err());
    }

    #[test]
    fn the_report_has_rfc_8460s_fields() {
        let sts = PolicyKey {
            kind: PolicyType::Sts,
            text: vec!["version: STSv1".into(), "mode: testing".into(), "mx: *.mail.company-y.example".into(), "max_age: 86400".into()],
            domain: "company-y.example".into(),
            mx_hosts: vec!["*.mail.company-y.example".into()],
        };
        let mut counts = Counts::default();
        (0..3).for_each(|_| assert!(counts.success(&sts)));
        let expired = Failure {
            result: ResultType::CertificateExpired,
            sending_ip: "2001:db8:abcd:12::1".into(),
            receiving_mx: "mx1.mail.company-y.example".into(),
            receiving_ip: Some("203.0.113.56".into()),
            reason: None,
        };
        assert!(counts.failure(&sts, expired.clone()));
        assert!(counts.failure(&sts, expired.clone()));
        let report =
            serde_json::to_value(counts.report("Sluice relay.test", "postmaster@relay.test", "r-1", 1_459_468_800, 1_459_468_800 + 86_399))
                .unwrap();
        let expected = serde_json::json!({
            "organization-name": "Sluice relay.test",
            "date-range": {"start-datetime": "2016-04-01T00:00:00Z", "end-datetime": "2016-04-01T23:59:59Z"},
            "contact-info": "postmaster@relay.test",
            "report-id": "r-1",
            "policies": [{
                "policy": {
                    "policy-type": "sts",
                    "policy-string": ["version: STSv1", "mode: testing", "mx: *.mail.company-y.example", "max_age: 86400"],
                    "policy-domain": "company-y.example",
                    "mx-host": ["*.mail.company-y.example"]
                },
                "summary": {"total-successful-session-count": 3, "total-failure-session-count": 2},
                "failure-details": [{
                    "result-type": "certificate-expired",
                    "sending-mta-ip": "2001:db8:abcd:12::1",
                    "receiving-mx-hostname": "mx1.mail.company-y.example",
                    "receiving-ip": "203.0.113.56",
                    "failed-session-count": 2
                }]
            }]
        });
        assert_eq!(report, expected);
        // Bounded: a new kind of failure past the cap keeps its count without its reason.
        for n in 0..MAX_FAILURE_KINDS {
            assert!(counts.failure(&sts, Failure { reason: Some(format!("reason {n}")), ..expired.clone() }));
        }
        let other = Failure { reason: Some("one more".into()), receiving_mx: "mx9.test".into(), ..expired.clone() };
        assert!(!counts.failure(&sts, other), "a new kind, and new without its reason");
        assert!(counts.failure(&sts, Failure { reason: Some("again".into()), ..expired.clone() }), "counted as the reasonless kind");
        for n in 0..MAX_POLICIES {
            let p = PolicyKey { text: vec![format!("mode: {n}")], ..sts.clone() };
            assert_eq!(counts.success(&p), n + 1 < MAX_POLICIES, "policy {n}");
        }
        let none = PolicyKey { kind: PolicyType::NoPolicyFound, text: vec![], domain: "x.test".into(), mx_hosts: vec![] };
        let mut counts = Counts::default();
        counts.success(&none);
        let report = serde_json::to_value(counts.report("o", "c", "r", 0, 86_399)).unwrap();
        assert_eq!(report["policies"][0]["policy"], serde_json::json!({"policy-type": "no-policy-found", "policy-domain": "x.test"}));
        for r in [ResultType::StsWebpkiInvalid, ResultType::StarttlsNotSupported, ResultType::CertificateHostMismatch] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.name());
        }
    }
}
