//! The queue toolbox over HTTP (the `admin` scope): the admin socket's requests as JSON
//! endpoints, carried out by the same handlers (`admin::perform`) for the operator
//! `api-key:NAME`, so the socket, the CLI and remote tools see one behaviour.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};

use super::problem::Problem;
use super::{Answer, BODY_TIMEOUT, json};
use crate::admin::protocol::{Request as AdminRequest, Response as AdminResponse, Selection};
use crate::admin::select::QueueState;
use crate::admin::{Daemon, QueueEntry, Refused};

/// Messages in one page of `GET /api/v1/queue` unless `limit` says otherwise, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// An action's body is a selection: small.
const MAX_ACTION_BODY: usize = 64 * 1024;

/// The queue actions taken with `POST /api/v1/queue/ACTION`.
pub const ACTIONS: &[&str] = &["flush", "requeue", "hold", "release", "delete", "bounce"];

/// Whether a route template is one of these endpoints (the `admin` scope's).
pub fn serves(template: &str) -> bool {
    template.starts_with("/api/v1/queue") || template == "/api/v1/reload"
}

/// Serves one admin endpoint (`template` is the route it matched, the key already checked).
pub async fn serve(req: Request<Incoming>, template: &str, daemon: &Daemon, key: &str) -> Answer {
    let operator = crate::intake::accept::api_user(key);
    let answer = match template {
        "/api/v1/queue" => list(&req, daemon).await,
        "/api/v1/queue/summary" => perform(daemon, operator, AdminRequest::QueueSummary).await,
        "/api/v1/queue/{id}" => match show_request(&req) {
            Ok(request) => perform(daemon, operator, request).await,
            Err(p) => Err(p),
        },
        "/api/v1/reload" => perform(daemon, operator, AdminRequest::Reload).await,
        action => {
            let action = action.trim_start_matches("/api/v1/queue/").to_string();
            match action_request(req, &action).await {
                Ok(request) => perform(daemon, operator, request).await,
                Err(p) => Err(p),
            }
        }
    };
    answer.unwrap_or_else(super::problem)
}

#[derive(Serialize)]
struct Page {
    messages: Vec<QueueEntry>,
    /// Pass as `after` for the next page; null on the last one.
    next: Option<String>,
}

/// `GET /api/v1/queue?domain=..&from=..&to=..&state=..&older_than=..&ids=a,b&after=ID&limit=N`.
async fn list(req: &Request<Incoming>, daemon: &Daemon) -> Result<Answer, Problem> {
    let mut selection = Selection::default();
    let (mut after, mut limit) = (None, DEFAULT_PAGE);
    for (name, value) in query(req) {
        let value = value.into_owned();
        let bad = |why: &str| Problem::new(400, "bad-query", "A query parameter is invalid").detail(format!("{name}: {why}"));
        match name.as_ref() {
            "ids" => selection.ids = value.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            "domain" => selection.domain = Some(value),
            "from" => selection.from = Some(value),
            "to" => selection.to = Some(value),
            "state" => selection.state = Some(state(&value).ok_or_else(|| bad("queued, deferred or held"))?),
            "older_than" => selection.older_than = Some(seconds(&value).ok_or_else(|| bad("seconds, or a duration such as 30m, 2h, 1d"))?),
            "after" => after = Some(value),
            "limit" => limit = value.parse().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| bad(&format!("1 to {MAX_PAGE}")))?,
            other => return Err(bad(&format!("unknown parameter {other:?}"))),
        }
    }
    let (messages, more) = crate::admin::list_page(daemon, selection, after, limit).await.map_err(problem_for)?;
    let next = if more { messages.last().map(|m| m.queue_id.clone()) } else { None };
    Ok(json(StatusCode::OK, &Page { messages, next }))
}

/// `GET /api/v1/queue/{id}[?body=true]`.
fn show_request(req: &Request<Incoming>) -> Result<AdminRequest, Problem> {
    let id = req.uri().path().trim_start_matches("/api/v1/queue/").to_string();
    let mut body = false;
    for (name, value) in query(req) {
        match (name.as_ref(), value.as_ref()) {
            ("body", "true" | "1") => body = true,
            ("body", "false" | "0") => body = false,
            (name, _) => {
                return Err(Problem::new(400, "bad-query", "A query parameter is invalid").detail(format!("{name}: body=true|false only")));
            }
        }
    }
    Ok(AdminRequest::QueueShow { id, body })
}

fn query(req: &Request<Incoming>) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
}

fn state(value: &str) -> Option<QueueState> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).ok()
}

fn seconds(value: &str) -> Option<u64> {
    value.parse().ok().or_else(|| value.parse::<crate::config::HumanDuration>().ok().map(|d| d.0.as_secs()))
}

/// The body of a queue action: a selection (at least one of ids, a filter or `all`), and for
/// `delete` `dry_run`, for `bounce` `status` and `reason`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    ids: Vec<String>,
    domain: Option<String>,
    #[serde(default)]
    all: bool,
    from: Option<String>,
    to: Option<String>,
    state: Option<QueueState>,
    /// Seconds.
    older_than: Option<u64>,
    dry_run: Option<bool>,
    status: Option<String>,
    reason: Option<String>,
}

async fn action_request(req: Request<Incoming>, action: &str) -> Result<AdminRequest, Problem> {
    super::json_body(req.headers())?;
    let reading = tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_ACTION_BODY).collect()).await;
    let body = match reading {
        Err(_) => return Err(Problem::new(408, "timeout", "The request body came too slowly")),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(Problem::new(413, "too-large", "The request is too large").detail(format!("at most {MAX_ACTION_BODY} octets")));
        }
        Ok(Err(e)) => return Err(Problem::new(400, "bad-request", "The request body could not be read").detail(e.to_string())),
        Ok(Ok(body)) => body.to_bytes(),
    };
    let parsed: ActionBody = serde_json::from_slice(&body)
        .map_err(|e| Problem::new(400, "malformed-json", "The body is not the JSON this endpoint takes").detail(e.to_string()))?;
    action_for(action, parsed)
}

fn action_for(action: &str, body: ActionBody) -> Result<AdminRequest, Problem> {
    let only = |field: &str, given: bool, action_of: &str| match given && action != action_of {
        true => Err(Problem::invalid(format!("/{field}"), format!("{field} is for {action_of} only"))),
        false => Ok(()),
    };
    only("dry_run", body.dry_run.is_some(), "delete")?;
    only("status", body.status.is_some(), "bounce")?;
    only("reason", body.reason.is_some(), "bounce")?;
    let selection = Selection {
        ids: body.ids,
        domain: body.domain,
        all: body.all,
        from: body.from,
        to: body.to,
        state: body.state,
        older_than: body.older_than,
    };
    // An action for every message is asked for by name, never by leaving the filters out.
    if selection.is_empty() {
        return Err(Problem::invalid("", "name the messages: ids, a filter (domain, from, to, state, older_than) or all: true"));
    }
    Ok(match action {
        "flush" => AdminRequest::QueueFlush(selection),
        "requeue" => AdminRequest::QueueRequeue(selection),
        "hold" => AdminRequest::QueueHold { selection, held: true },
        "release" => AdminRequest::QueueHold { selection, held: false },
        "delete" => AdminRequest::QueueDelete { selection, dry_run: body.dry_run.unwrap_or(false) },
        _ => AdminRequest::QueueBounce {
            selection,
            status: body.status.unwrap_or_else(|| "5.0.0".into()),
            reason: body.reason.unwrap_or_else(|| "Returned to the sender by the mail administrator".into()),
        },
    })
}

#[derive(Serialize)]
struct Done {
    messages: usize,
    ids: Vec<String>,
}

#[derive(Serialize)]
struct Summary {
    destinations: Vec<crate::admin::DestinationSummary>,
    /// Whether limits are shared with other nodes now (absent without `cluster.redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::cluster::ClusterStatus>,
}

async fn perform(daemon: &Daemon, operator: String, request: AdminRequest) -> Result<Answer, Problem> {
    let answer = crate::admin::perform(daemon, operator, request).await.map_err(problem_for)?;
    Ok(match answer {
        AdminResponse::Done { messages, ids } => json(StatusCode::OK, &Done { messages, ids }),
        AdminResponse::Summary(destinations) => {
            json(StatusCode::OK, &Summary { destinations, cluster: daemon.cluster.as_ref().map(|c| c.status()) })
        }
        AdminResponse::Message(view) => json(StatusCode::OK, &view),
        AdminResponse::Reloaded(report) => json(StatusCode::OK, &report),
        AdminResponse::Transferred { report, .. } => json(StatusCode::OK, &report),
        AdminResponse::Cluster(status) => json(StatusCode::OK, &status),
        AdminResponse::NotFound(id) => return Err(problem_for(Refused::NotFound(id))),
        AdminResponse::Error(e) => return Err(problem_for(Refused::Failed(e))),
        AdminResponse::Entry(_) | AdminResponse::Listed(_) => {
            return Err(problem_for(Refused::Failed("a listing is not an answer here".into())));
        }
    })
}

/// The problem document for a refusal, by kind.
fn problem_for(refused: Refused) -> Problem {
    let text = refused.to_string();
    match refused {
        Refused::NotFound(_) => Problem::new(404, "no-such-message", "No such message").detail(text),
        Refused::Invalid(_) => Problem::invalid("", text),
        Refused::Paused(_) => Problem::new(409, "paused", "Delivery is paused").detail(text),
        Refused::Unavailable(_) => {
            let mut p = Problem::new(503, "unavailable", "The daemon cannot do this now").detail(text);
            p.retry_after = Some(5);
            p
        }
        Refused::Failed(_) => Problem::new(500, "failed", "The request failed").detail(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> ActionBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn each_kind_of_refusal_has_its_status() {
        let status = |r: Refused| {
            let p = problem_for(r);
            (p.status, p.retry_after)
        };
        assert_eq!(status(Refused::NotFound("Q1".into())), (404, None));
        assert_eq!(status(Refused::Invalid("x".into())), (422, None));
        assert_eq!(status(Refused::Paused("nothing is sent".into())), (409, None));
        // The daemon is shutting down: another node, or this one after its restart, can serve it.
        assert_eq!(status(Refused::Unavailable("shutting down".into())), (503, Some(5)));
        assert_eq!(status(Refused::Failed("disk".into())), (500, None));
    }

    #[test]
    fn actions_need_a_selection_and_only_their_own_fields() {
        assert_eq!(action_for("flush", body(serde_json::json!({}))).unwrap_err().status, 422);
        let p = action_for("hold", body(serde_json::json!({"all": true, "dry_run": true}))).unwrap_err();
        assert_eq!((p.status, p.pointer.as_deref()), (422, Some("/dry_run")));
        assert!(serde_json::from_value::<ActionBody>(serde_json::json!({"domian": "x"})).is_err(), "a misspelt filter is refused");
        match action_for("release", body(serde_json::json!({"domain": "a.test"}))).unwrap() {
            AdminRequest::QueueHold { selection, held } => assert!(!held && selection.domain.as_deref() == Some("a.test")),
            other => panic!("{other:?}"),
        }
        match action_for("bounce", body(serde_json::json!({"ids": ["A"], "status": "5.7.1"}))).unwrap() {
            AdminRequest::QueueBounce { status, reason, .. } => assert!(status == "5.7.1" && reason.contains("administrator")),
            other => panic!("{other:?}"),
        }
        match action_for("delete", body(serde_json::json!({"ids": ["A"], "dry_run": true}))).unwrap() {
            AdminRequest::QueueDelete { dry_run, .. } => assert!(dry_run),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations_in_a_query_are_seconds_or_human() {
        assert_eq!(seconds("90"), Some(90));
        assert_eq!(seconds("2h"), Some(7200));
        assert_eq!(seconds("soon"), None);
        assert_eq!(state("held"), Some(QueueState::Held));
        assert_eq!(state("gone"), None);
    }
}
