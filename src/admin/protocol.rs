//! What the admin socket carries: one request, one response, both JSON.

use serde::{Deserialize, Serialize};

use super::{DestinationSummary, QueueEntry};

/// What an operator asks the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Every queued message.
    QueueList,
    /// Per destination: queued mail, connections, rates, suspensions.
    QueueSummary,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Queue(Vec<QueueEntry>),
    Summary(Vec<DestinationSummary>),
    /// The request could not be carried out (or not read).
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        assert_eq!(serde_json::to_string(&Request::QueueList).unwrap(), r#"{"request":"queue_list"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"request":"queue_summary"}"#).unwrap(), Request::QueueSummary);
        assert!(serde_json::from_str::<Request>(r#"{"request":"queue_destroy"}"#).is_err(), "unknown requests are refused");
    }
}
