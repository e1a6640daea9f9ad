//! The report as mail (RFC 8460 5.3): multipart/report with report-type "tlsrpt", a short
//! text part, and the gzipped JSON as `application/tlsrpt+gzip` named
//! `submitter!domain!begin!end!id.json.gz`; Subject, TLS-Report-Domain and
//! TLS-Report-Submitter as the RFC writes them.

use base64::Engine;

/// What one report mail says.
pub struct ReportMail<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// The policy domain the report is about.
    pub domain: &'a str,
    /// Our host name.
    pub submitter: &'a str,
    /// The domain of our contact address: the file name's first field.
    pub sender: &'a str,
    pub report_id: &'a str,
    /// The period, unix seconds (both ends included).
    pub start: u64,
    pub end: u64,
    pub now: u64,
    /// The report's JSON, gzipped.
    pub gzipped: &'a [u8],
}

/// The attachment's name (RFC 8460 5.3): `sender!policy-domain!begin!end!unique-id`, the
/// unique id letters and digits only.
pub fn file_name(sender: &str, domain: &str, start: u64, end: u64, report_id: &str) -> String {
    let id: String = report_id.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{sender}!{domain}!{start}!{end}!{id}.json.gz")
}

impl ReportMail<'_> {
    /// The whole message, CRLF line ends.
    pub fn render(&self) -> Vec<u8> {
        let boundary = format!("=_tlsrpt_{}_{}", self.start, self.end);
        let date = crate::message::date::rfc5322_date(self.now);
        let name = file_name(self.sender, self.domain, self.start, self.end, self.report_id);
        let encoded = base64::engine::general_purpose::STANDARD.encode(self.gzipped);
        let mut out = String::new();
        out.push_str(&format!("From: {}\r\n", self.from));
        out.push_str(&format!("To: {}\r\n", self.to));
        out.push_str(&format!("Subject: Report Domain: {} Submitter: {} Report-ID: <{}>\r\n", self.domain, self.submitter, self.report_id));
        out.push_str(&format!("Date: {date}\r\n"));
        out.push_str(&format!("Message-ID: <{}@{}>\r\n", self.report_id, self.submitter));
        out.push_str(&format!("TLS-Report-Domain: {}\r\n", self.domain));
        out.push_str(&format!("TLS-Report-Submitter: {}\r\n", self.submitter));
        out.push_str("MIME-Version: 1.0\r\n");
        out.push_str(&format!("Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\r\n"));
        out.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"));
        out.push_str(&format!(
            "This is an aggregate TLS report (RFC 8460) from {} about mail to {},\r\nfrom {} to {} (UTC).\r\n\r\n",
            self.submitter,
            self.domain,
            crate::message::date::rfc5322_date(self.start),
            crate::message::date::rfc5322_date(self.end)
        ));
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\n"
        ));
        for line in encoded.as_bytes().chunks(76) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push_str("\r\n");
        }
        out.push_str(&format!("--{boundary}--\r\n"));
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mail_carries_the_fields_rfc_8460_names() {
        let gz = vec![0x1f, 0x8b, 8, 0, 1, 2, 3];
        let mail = ReportMail {
            from: "postmaster@relay.test",
            to: "tlsrpt@d.test",
            domain: "d.test",
            submitter: "relay.test",
            sender: "admin.test",
            report_id: "1700000000a1b2",
            start: 1_700_000_000,
            end: 1_700_086_399,
            now: 1_700_090_000,
            gzipped: &gz,
        };
        let text = String::from_utf8(mail.render()).unwrap();
        assert!(text.contains("Subject: Report Domain: d.test Submitter: relay.test Report-ID: <1700000000a1b2>\r\n"));
        assert!(text.contains("TLS-Report-Domain: d.test\r\nTLS-Report-Submitter: relay.test\r\n"));
        assert!(text.contains("Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary="));
        assert!(text.contains("filename=\"admin.test!d.test!1700000000!1700086399!1700000000a1b2.json.gz\""));
        assert!(text.contains("\r\nH4sIAAECAw==\r\n"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 998));
    }
}
