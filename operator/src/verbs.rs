//! The verbs: each is one request to `/api/v1/sagas` (contract, section 2) and a way to show its
//! answer to a person.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::bulk::BulkVerb;
use crate::export::ExportArgs;
use crate::filters::{optional, SharedFilters};
use crate::request::Request;
use crate::table;

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Sagas, newest first: id, name, key, state, created, updated. A full page ends with the
    /// cursor that --before takes for the next one.
    List(ListArgs),
    /// One saga: its fields, then its steps (state, participant, attempts, retry time, error).
    Show(SagaId),
    /// A saga's event log, oldest first.
    Events(SagaId),
    /// Abort a running or prepared saga: stop dispatching actions and compensate what was done
    /// (a prepared saga just becomes aborted).
    Abort(SagaId),
    /// Give a failed saga's exhausted compensations (or a prepared saga's check-backs) a fresh set
    /// of attempts.
    Retry(SagaId),
    /// Mark a failed saga as repaired by hand: it becomes compensated (aborted if nothing was ever
    /// dispatched), the note kept in its event log.
    Resolve(ResolveArgs),
    /// Start a prepared (two-phase) saga, as its initiator would once its local transaction
    /// committed.
    Commit(SagaId),
    /// Send now what waits out a retry backoff (a step's next attempt, or a prepared saga's next
    /// check-back), e.g. once a participant's dependency is back.
    RetryNow(SagaId),
    /// Hold an in-flight saga: nothing more is sent and no timer fires until `resume` (replies to
    /// commands already out are still recorded), e.g. while a downstream service is repaired.
    Pause(SagaId),
    /// Continue a paused saga where it stood; each wait gets back the time it had left.
    Resume(SagaId),
    /// Pause every saga of a name, running and new (e.g. every place-order saga while payments is
    /// down), until `resume-name`.
    PauseName(SagaName),
    /// Resume the sagas a name's pause holds (not those paused one by one with `pause`).
    ResumeName(SagaName),
    /// The names whose sagas are paused, and since when.
    PausedNames,
    /// Every saga the filters match (all of them without one), oldest first, as JSON lines: each
    /// saga's document with its event log as `events`. For archiving what retention will remove;
    /// written as it arrives, with the count on stderr. --timeout-secs bounds each wait for data,
    /// not the whole export.
    Export(ExportArgs),
    /// Act on every saga a filter matches, as a durable job of the coordinator: `bulk start`,
    /// `list`, `show`, `sagas`, `cancel`.
    #[command(subcommand)]
    Bulk(BulkVerb),
}

#[derive(Debug, Args)]
pub struct SagaName {
    /// The sagas' name, as they were submitted (e.g. place-order).
    pub name: String,
}

#[derive(Debug, Args)]
pub struct SagaId {
    /// The saga's id, as `list` shows it.
    pub id: String,
}

/// The list's filters, passed to the API as they are: it knows which states exist.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filters: SharedFilters,

    /// Only the saga submitted with this key (exact), whatever its name.
    #[arg(long)]
    pub key: Option<String>,

    /// Only sagas created at or after this time, RFC 3339 (e.g. 2026-03-01T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub created_after: Option<String>,

    /// Only sagas created strictly before this time, RFC 3339.
    #[arg(long, value_name = "TIME")]
    pub created_before: Option<String>,

    /// Only sagas with a step sent to this participant.
    #[arg(long)]
    pub participant: Option<String>,

    /// Only sagas with a step of this name.
    #[arg(long)]
    pub step: Option<String>,

    /// Only sagas with a step whose error contains this text (any case).
    #[arg(long)]
    pub error: Option<String>,

    /// Sagas per page, 1 to 500 (the API's default is 50).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub limit: Option<u16>,

    /// The cursor the previous page ended with (`next`): the next page, older sagas.
    #[arg(long, value_name = "CURSOR", conflicts_with = "after")]
    pub before: Option<String>,

    /// The cursor a page began with (`prev`): the page before it, newer sagas.
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The saga's id, as `list` shows it.
    pub id: String,

    /// What was repaired, kept in the saga's event log. The API refuses a blank one (exit code 7).
    #[arg(long)]
    pub note: String,
}

impl Verb {
    /// The verb's one request.
    pub(crate) fn request(&self) -> Request {
        match self {
            Verb::List(filters) => {
                let mut query = filters.filters.query();
                query.extend(optional(&[
                    ("key", &filters.key),
                    ("created_after", &filters.created_after),
                    ("created_before", &filters.created_before),
                    ("participant", &filters.participant),
                    ("step", &filters.step),
                    ("error", &filters.error),
                ]));
                query.extend(filters.limit.map(|limit| ("limit", limit.to_string())));
                query.extend(filters.before.clone().map(|cursor| ("before", cursor)));
                query.extend(filters.after.clone().map(|cursor| ("after", cursor)));
                Request {
                    query,
                    ..Request::get(&[])
                }
            }
            Verb::Show(saga) => Request::get(&[&saga.id]),
            Verb::Events(saga) => Request::get(&[&saga.id, "events"]),
            Verb::Abort(saga) => Request::act(&saga.id, "abort"),
            Verb::Retry(saga) => Request::act(&saga.id, "retry"),
            Verb::Resolve(resolve) => Request {
                body: Some(json!({ "note": resolve.note })),
                ..Request::act(&resolve.id, "resolve")
            },
            Verb::Commit(saga) => Request::act(&saga.id, "commit"),
            Verb::RetryNow(saga) => Request::act(&saga.id, "retry-now"),
            Verb::Pause(saga) => Request::act(&saga.id, "pause"),
            Verb::Resume(saga) => Request::act(&saga.id, "resume"),
            Verb::PauseName(name) => Request::act_on_name(&name.name, "pause"),
            Verb::ResumeName(name) => Request::act_on_name(&name.name, "resume"),
            Verb::PausedNames => Request {
                resource: "saga-names",
                ..Request::get(&["paused"])
            },
            Verb::Export(export) => export.request(),
            Verb::Bulk(bulk) => bulk.request(),
        }
    }

    /// The answer for a person (`--json` prints the document instead).
    pub(crate) fn render(&self, answer: &Value) -> String {
        match self {
            Verb::List(_) => table::saga_list(answer),
            Verb::Show(_) => table::saga_detail(answer),
            Verb::Events(_) => table::event_log(answer),
            // Every action answers the saga document as it stands afterwards.
            Verb::Abort(_)
            | Verb::Retry(_)
            | Verb::Resolve(_)
            | Verb::Commit(_)
            | Verb::RetryNow(_)
            | Verb::Pause(_)
            | Verb::Resume(_) => table::saga_changed(answer),
            Verb::PauseName(_) | Verb::ResumeName(_) => table::name_changed(answer),
            Verb::PausedNames => table::paused_names(answer),
            // Streamed to its output by `export::run`, never read whole.
            Verb::Export(_) => String::new(),
            Verb::Bulk(bulk) => bulk.render(answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::Method;

    use super::*;

    fn id(id: &str) -> SagaId {
        SagaId { id: id.into() }
    }

    #[test]
    fn each_verb_is_the_documented_request() {
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases = [
            (Verb::Show(id("s1")), Method::GET, path(&["s1"])),
            (Verb::Events(id("s1")), Method::GET, path(&["s1", "events"])),
            (Verb::Abort(id("s1")), Method::POST, path(&["s1", "abort"])),
            (Verb::Retry(id("s1")), Method::POST, path(&["s1", "retry"])),
            (
                Verb::Commit(id("s1")),
                Method::POST,
                path(&["s1", "commit"]),
            ),
            (
                Verb::RetryNow(id("s1")),
                Method::POST,
                path(&["s1", "retry-now"]),
            ),
            (Verb::Pause(id("s1")), Method::POST, path(&["s1", "pause"])),
            (Verb::PausedNames, Method::GET, path(&["paused"])),
            (
                Verb::Resume(id("s1")),
                Method::POST,
                path(&["s1", "resume"]),
            ),
        ];
        for (verb, method, path) in cases {
            let request = verb.request();
            assert_eq!(
                (&request.method, &request.path),
                (&method, &path),
                "{verb:?}"
            );
            assert_eq!(request.body, None, "{verb:?}");
            assert!(request.query.is_empty(), "{verb:?}");
        }
        let name = |n: &str| SagaName { name: n.into() };
        for (verb, resource, method, path) in [
            (Verb::Show(id("s1")), "sagas", Method::GET, path(&["s1"])),
            (
                Verb::PauseName(name("place-order")),
                "saga-names",
                Method::POST,
                path(&["place-order", "pause"]),
            ),
            (
                Verb::ResumeName(name("place-order")),
                "saga-names",
                Method::POST,
                path(&["place-order", "resume"]),
            ),
            (
                Verb::PausedNames,
                "saga-names",
                Method::GET,
                path(&["paused"]),
            ),
        ] {
            let request = verb.request();
            assert_eq!(
                (request.resource, &request.method, &request.path),
                (resource, &method, &path),
                "{verb:?}"
            );
        }
        let resolve = Verb::Resolve(ResolveArgs {
            id: "s1".into(),
            note: "refunded by hand".into(),
        })
        .request();
        assert_eq!(resolve.method, Method::POST);
        assert_eq!(resolve.path, path(&["s1", "resolve"]));
        assert_eq!(resolve.body, Some(json!({"note": "refunded by hand"})));
    }

    #[test]
    fn list_passes_every_filter_as_the_api_names_it() {
        let request = Verb::List(ListArgs {
            filters: SharedFilters {
                states: vec!["running".into(), "failed".into()],
                name: Some("place-order".into()),
                finished_after: Some("2026-03-02T00:00:00Z".into()),
                finished_before: Some("2026-03-03T00:00:00Z".into()),
            },
            key: Some("order-8812".into()),
            created_after: Some("2026-03-01T00:00:00Z".into()),
            created_before: Some("2026-04-01T00:00:00Z".into()),
            participant: Some("payments".into()),
            step: Some("charge".into()),
            error: Some("declined".into()),
            limit: Some(20),
            before: Some("cursor-1".into()),
            after: None,
        })
        .request();
        assert_eq!(request.method, Method::GET);
        assert!(request.path.is_empty());
        assert_eq!(
            request.query,
            [
                ("state", "running".to_string()),
                ("state", "failed".to_string()),
                ("name", "place-order".to_string()),
                ("finished_after", "2026-03-02T00:00:00Z".to_string()),
                ("finished_before", "2026-03-03T00:00:00Z".to_string()),
                ("key", "order-8812".to_string()),
                ("created_after", "2026-03-01T00:00:00Z".to_string()),
                ("created_before", "2026-04-01T00:00:00Z".to_string()),
                ("participant", "payments".to_string()),
                ("step", "charge".to_string()),
                ("error", "declined".to_string()),
                ("limit", "20".to_string()),
                ("before", "cursor-1".to_string()),
            ]
        );
        let unfiltered = Verb::List(ListArgs {
            filters: SharedFilters::default(),
            key: None,
            created_after: None,
            created_before: None,
            participant: None,
            step: None,
            error: None,
            limit: None,
            before: None,
            after: Some("cursor-2".into()),
        })
        .request();
        assert_eq!(unfiltered.query, [("after", "cursor-2".to_string())]);
    }
}
