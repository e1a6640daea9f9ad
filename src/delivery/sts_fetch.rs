//! Fetching an MTA-STS policy (RFC 8461 3.3): `GET /.well-known/mta-sts.txt` from
//! `mta-sts.DOMAIN` over HTTPS with a WebPKI-valid certificate for that name, HTTP/1.1, no
//! redirects followed, 200 and `text/plain` only, at most 64 KiB, within one deadline
//! (the request itself is `delivery::https`).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;

use super::https::HttpsError;
use super::mta_sts::{MAX_POLICY_SIZE, Policy, StsError, parse_policy};
use super::tls_rpt::ResultType;
use crate::dns::Resolve;

/// How a fetch is made.
#[derive(Clone)]
pub struct FetchSettings {
    pub port: u16,
    pub timeout: Duration,
    /// Verifies the policy host's certificate (WebPKI roots and `delivery.tls_trust`).
    pub tls: Arc<rustls::ClientConfig>,
}

/// Why a fetch gave no policy. [`FetchError::result_type`] is its RFC 8460 name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// `mta-sts.DOMAIN` has no address, or its lookup failed.
    Resolve(String),
    Connect(String),
    /// The handshake failed; a certificate that is not valid for the name among them.
    Tls(String),
    /// Anything but 200 (a redirect is not followed: RFC 8461 3.3).
    Status(u16),
    ContentType(String),
    TooLarge,
    Http(String),
    Timeout,
    Invalid(StsError),
}

impl FetchError {
    /// The failure's result type in a TLS-RPT report (RFC 8460 4.3.2.2).
    pub fn result_type(&self) -> ResultType {
        match self {
            FetchError::Tls(why) if why.contains("certificate") => ResultType::StsWebpkiInvalid,
            FetchError::Invalid(_) | FetchError::ContentType(_) | FetchError::TooLarge => ResultType::StsPolicyInvalid,
            _ => ResultType::StsPolicyFetchError,
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Resolve(why) => write!(f, "policy host not found: {why}"),
            FetchError::Connect(why) => write!(f, "connecting to the policy host: {why}"),
            FetchError::Tls(why) => write!(f, "TLS with the policy host: {why}"),
            FetchError::Status(code) => write!(f, "the policy host answered {code} (only 200 is a policy)"),
            FetchError::ContentType(t) => write!(f, "the policy is {t:?}, not text/plain"),
            FetchError::TooLarge => write!(f, "the policy is larger than {MAX_POLICY_SIZE} octets"),
            FetchError::Http(why) => write!(f, "HTTP: {why}"),
            FetchError::Timeout => f.write_str("the fetch took too long"),
            FetchError::Invalid(e) => write!(f, "not a policy: {e}"),
        }
    }
}

/// The policy text and its reading, from `https://mta-sts.{domain}/.well-known/mta-sts.txt`.
pub async fn fetch(domain: &str, dns: &impl Resolve, settings: &FetchSettings) -> Result<(String, Policy), FetchError> {
    let host = format!("mta-sts.{domain}");
    let text = tokio::time::timeout(settings.timeout, fetch_text(&host, dns, settings)).await.map_err(|_| FetchError::Timeout)??;
    let policy = parse_policy(&text).map_err(FetchError::Invalid)?;
    Ok((text, policy))
}

async fn fetch_text(host: &str, dns: &impl Resolve, settings: &FetchSettings) -> Result<String, FetchError> {
    let request =
        hyper::Request::get("/.well-known/mta-sts.txt").body(Full::new(Bytes::new())).map_err(|e| FetchError::Http(e.to_string()))?;
    let response = super::https::send(host, settings.port, request, dns, &settings.tls).await.map_err(|e| match e {
        HttpsError::Resolve(why) => FetchError::Resolve(why),
        HttpsError::Connect(why) => FetchError::Connect(why),
        HttpsError::Tls(why) => FetchError::Tls(why),
        HttpsError::Http(why) => FetchError::Http(why),
    })?;
    read(response).await
}

async fn read(response: hyper::Response<hyper::body::Incoming>) -> Result<String, FetchError> {
    if response.status() != hyper::StatusCode::OK {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    let declared = response.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if !declared.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("text/plain") {
        return Err(FetchError::ContentType(declared));
    }
    let body = Limited::new(response.into_body(), MAX_POLICY_SIZE).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() { FetchError::TooLarge } else { FetchError::Http(e.to_string()) }
    })?;
    String::from_utf8(body.to_bytes().to_vec()).map_err(|_| FetchError::Invalid(StsError::Field("policy", "not UTF-8".into())))
}
