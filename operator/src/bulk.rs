//! `coordinator sagas bulk ...`: an operator's action over every saga a filter matches, as a
//! durable job of the coordinator (`/api/v1/bulk-actions`), and its progress.

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};

use crate::request::Request;
use crate::table;

#[derive(Debug, Subcommand)]
pub enum BulkVerb {
    /// Apply ACTION to every saga the filters match now (at least one filter), in the background,
    /// each saga once. Prints the bulk action; `--wait` follows it to the end.
    Start(StartArgs),
    /// Bulk actions, newest first, with their progress.
    List(BulkListArgs),
    /// One bulk action: its filter and how far it got (`--wait`: until it is done).
    Show(ShowArgs),
    /// The sagas of a bulk action with what became of each (why a saga was skipped).
    Sagas(SagasArgs),
    /// Stop a running bulk action: sagas not done yet are left as they are.
    Cancel(BulkId),
}

/// What a bulk action does to each saga: the single verbs of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BulkOperation {
    Abort,
    Retry,
    Resolve,
    Pause,
    Resume,
    RetryNow,
}

impl BulkOperation {
    fn as_str(self) -> &'static str {
        match self {
            BulkOperation::Abort => "abort",
            BulkOperation::Retry => "retry",
            BulkOperation::Resolve => "resolve",
            BulkOperation::Pause => "pause",
            BulkOperation::Resume => "resume",
            BulkOperation::RetryNow => "retry-now",
        }
    }
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The action applied to each saga.
    pub action: BulkOperation,

    /// Only sagas in this state (repeat for several): prepared, running, compensating, committed,
    /// compensated, aborted, failed.
    #[arg(long = "state", value_name = "STATE")]
    pub states: Vec<String>,

    /// Only sagas of this name (e.g. place-order).
    #[arg(long)]
    pub name: Option<String>,

    /// For `resolve`, and required there: what was repaired, kept in each saga's event log.
    #[arg(long)]
    pub note: Option<String>,

    /// Follow the bulk action until it is done, printing its progress to stderr.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct BulkListArgs {
    /// Bulk actions per page, 1 to 500 (the API's default is 50).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub limit: Option<u16>,

    /// The cursor the previous page ended with: the next page, older bulk actions.
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The bulk action's id, as `start` or `list` shows it.
    pub id: String,

    /// Follow it until it is done, printing its progress to stderr.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct SagasArgs {
    /// The bulk action's id.
    pub id: String,

    /// Only sagas with this outcome: applied, unchanged, skipped, or pending (not done yet).
    #[arg(long)]
    pub outcome: Option<String>,

    /// Sagas per page, 1 to 500 (the API's default is 50).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub limit: Option<u16>,

    /// The cursor the previous page ended with.
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
}

#[derive(Debug, Args)]
pub struct BulkId {
    /// The bulk action's id.
    pub id: String,
}

impl BulkVerb {
    /// The verb's request.
    pub(crate) fn request(&self) -> Request {
        match self {
            BulkVerb::Start(start) => {
                let mut filter = serde_json::Map::new();
                if !start.states.is_empty() {
                    filter.insert("state".into(), json!(start.states));
                }
                if let Some(name) = &start.name {
                    filter.insert("name".into(), json!(name));
                }
                let mut body = json!({ "action": start.action.as_str(), "filter": filter });
                if let Some(note) = &start.note {
                    body["note"] = json!(note);
                }
                Request {
                    method: Method::POST,
                    body: Some(body),
                    ..Request::bulk(&[])
                }
            }
            BulkVerb::List(page) => {
                let mut request = Request::bulk(&[]);
                request
                    .query
                    .extend(page.limit.map(|limit| ("limit", limit.to_string())));
                request
                    .query
                    .extend(page.before.clone().map(|cursor| ("before", cursor)));
                request
            }
            BulkVerb::Show(show) => Request::bulk(&[&show.id]),
            BulkVerb::Sagas(sagas) => {
                let mut request = Request::bulk(&[&sagas.id, "sagas"]);
                request
                    .query
                    .extend(sagas.outcome.clone().map(|o| ("outcome", o)));
                request
                    .query
                    .extend(sagas.limit.map(|limit| ("limit", limit.to_string())));
                request
                    .query
                    .extend(sagas.after.clone().map(|cursor| ("after", cursor)));
                request
            }
            BulkVerb::Cancel(bulk) => Request {
                method: Method::POST,
                ..Request::bulk(&[&bulk.id, "cancel"])
            },
        }
    }

    /// The answer for a person.
    pub(crate) fn render(&self, answer: &Value) -> String {
        match self {
            BulkVerb::List(_) => table::bulk_action_list(answer),
            BulkVerb::Sagas(_) => table::bulk_sagas(answer),
            BulkVerb::Start(_) | BulkVerb::Show(_) | BulkVerb::Cancel(_) => {
                table::bulk_action(answer)
            }
        }
    }

    /// Whether to follow the answered bulk action until it is done.
    pub(crate) fn waits(&self) -> bool {
        matches!(
            self,
            BulkVerb::Start(StartArgs { wait: true, .. })
                | BulkVerb::Show(ShowArgs { wait: true, .. })
        )
    }
}

/// The request that reads bulk action `id` again, while following it.
pub(crate) fn reread(id: &str) -> Request {
    Request::bulk(&[id])
}

/// Whether a bulk action document is still running.
pub(crate) fn running(doc: &Value) -> bool {
    doc.get("state").and_then(Value::as_str) == Some("running")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_sends_the_filter_and_only_the_given_fields() {
        let request = BulkVerb::Start(StartArgs {
            action: BulkOperation::RetryNow,
            states: vec!["running".into(), "compensating".into()],
            name: Some("place-order".into()),
            note: None,
            wait: false,
        })
        .request();
        assert_eq!(request.resource, "bulk-actions");
        assert_eq!(request.method, Method::POST);
        assert!(request.path.is_empty());
        assert_eq!(
            request.body,
            Some(json!({
                "action": "retry-now",
                "filter": {"state": ["running", "compensating"], "name": "place-order"},
            }))
        );
        let resolve = BulkVerb::Start(StartArgs {
            action: BulkOperation::Resolve,
            states: Vec::new(),
            name: Some("refund".into()),
            note: Some("refunded by hand".into()),
            wait: true,
        });
        assert!(resolve.waits());
        assert_eq!(
            resolve.request().body,
            Some(json!({
                "action": "resolve", "filter": {"name": "refund"}, "note": "refunded by hand",
            }))
        );
    }

    #[test]
    fn the_other_verbs_are_the_documented_requests() {
        let id = |id: &str| BulkId { id: id.into() };
        let cancel = BulkVerb::Cancel(id("b1")).request();
        assert_eq!(
            (cancel.method, cancel.path),
            (Method::POST, vec!["b1".to_string(), "cancel".to_string()])
        );
        let sagas = BulkVerb::Sagas(SagasArgs {
            id: "b1".into(),
            outcome: Some("skipped".into()),
            limit: Some(10),
            after: Some("c".into()),
        })
        .request();
        assert_eq!(sagas.path, vec!["b1".to_string(), "sagas".to_string()]);
        assert_eq!(
            sagas.query,
            [
                ("outcome", "skipped".to_string()),
                ("limit", "10".to_string()),
                ("after", "c".to_string()),
            ]
        );
        let show = BulkVerb::Show(ShowArgs {
            id: "b1".into(),
            wait: false,
        });
        assert!(!show.waits());
        assert_eq!(show.request().method, Method::GET);
    }
}
