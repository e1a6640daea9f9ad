//! RFC 9457 problem documents: every error the API answers is one, naming the field at fault
//! (a JSON Pointer, RFC 6901) where there is one.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI naming the kind of problem (relative: resolved against the API's base).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request field at fault, as a JSON Pointer (`/to/2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// Messages of the request already queued before it failed (they will be delivered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<String>,
    /// Seconds to wait before trying again (also in the Retry-After header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: u16, kind: &str, title: &str) -> Problem {
        Problem {
            kind: format!("/api/v1/problems/{kind}"),
            title: title.into(),
            status,
            detail: None,
            pointer: None,
            queued: Vec::new(),
            retry_after: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    pub fn at(mut self, pointer: impl Into<String>) -> Problem {
        self.pointer = Some(pointer.into());
        self
    }

    /// 422: the request is well-formed JSON but a field is wrong.
    pub fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem::new(422, "invalid-field", "A field of the request is invalid").at(pointer).detail(detail)
    }

    pub fn unauthorized(detail: &str) -> Problem {
        Problem::new(401, "unauthorized", "An API key is needed").detail(detail)
    }
}
