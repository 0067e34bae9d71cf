//! The API's documents as text for a person: pure functions of the JSON, so they are tested
//! without a coordinator. Missing fields show as `-` rather than failing: an older or newer
//! coordinator's document still prints.
//!
//! Saga data (names, keys, payloads, errors) is whatever clients and participants sent, so control
//! characters are escaped: a value can neither break a table's line nor drive the terminal.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// `s`, with every control character escaped (`\n`, `\u{1b}`).
pub fn printable(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| match c {
                    c if c.is_control() => c.escape_default().to_string(),
                    c => c.to_string(),
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

/// A value in a cell: text as it is, null as `-`, anything else as compact JSON.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => printable(s).into_owned(),
        Some(other) => printable(&other.to_string()).into_owned(),
    }
}

/// A time of the API (RFC 3339) in UTC, to the second or to the millisecond; what is not a time is
/// shown as it came.
fn time(value: Option<&Value>, millis: bool) -> String {
    let Some(text) = value.and_then(Value::as_str) else {
        return cell(value);
    };
    match DateTime::parse_from_rfc3339(text) {
        Ok(at) => {
            let format = if millis {
                "%Y-%m-%d %H:%M:%S%.3fZ"
            } else {
                "%Y-%m-%d %H:%M:%SZ"
            };
            at.with_timezone(&Utc).format(format).to_string()
        }
        Err(_) => printable(text).into_owned(),
    }
}

/// A saga's state, marked when an operator holds it (`pause`): paused is not a state of its own.
fn state(saga: &Value) -> String {
    let state = cell(saga.get("state"));
    if saga.get("paused_at").is_some_and(Value::is_string) {
        format!("{state} (paused)")
    } else {
        state
    }
}

fn items(doc: &Value) -> &[Value] {
    doc.get("items")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

/// Columns left-aligned, two spaces apart; the last column is not padded, so a long error does not
/// widen the others.
struct Table {
    header: Option<Vec<&'static str>>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: Vec<&'static str>) -> Table {
        Table {
            header: Some(header),
            rows: Vec::new(),
        }
    }

    /// Name-value lines, without a header.
    fn fields() -> Table {
        Table {
            header: None,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let header: Option<Vec<String>> = self
            .header
            .as_ref()
            .map(|h| h.iter().map(|s| s.to_string()).collect());
        let lines: Vec<&Vec<String>> = header.iter().chain(&self.rows).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                lines
                    .iter()
                    .filter_map(|l| l.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i + 1 < line.len() {
                    let pad = widths[i] - cell.chars().count();
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad + 2));
                } else {
                    text.push_str(cell);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `GET /api/v1/sagas`: one saga per line, then the cursors of the pages beside it, if any.
pub fn saga_list(doc: &Value) -> String {
    let sagas = items(doc);
    let mut out = if sagas.is_empty() {
        "no sagas\n".to_string()
    } else {
        let mut table = Table::new(vec!["ID", "NAME", "KEY", "STATE", "CREATED", "UPDATED"]);
        for saga in sagas {
            table.row(vec![
                cell(saga.get("id")),
                cell(saga.get("name")),
                cell(saga.get("key")),
                state(saga),
                time(saga.get("created_at"), false),
                time(saga.get("updated_at"), false),
            ]);
        }
        table.render()
    };
    if let Some(cursor) = doc.get("next").filter(|c| !c.is_null()) {
        out.push_str(&format!(
            "more sagas: pass --before {} (with the same filters) for the next page\n",
            cell(Some(cursor))
        ));
    }
    if let Some(cursor) = doc.get("prev").filter(|c| !c.is_null()) {
        out.push_str(&format!(
            "newer sagas: pass --after {} (with the same filters) for the page before\n",
            cell(Some(cursor))
        ));
    }
    out
}

/// `GET /api/v1/sagas/{id}`: the saga's fields, then its steps.
pub fn saga_detail(saga: &Value) -> String {
    let mut fields = Table::fields();
    let mut field = |name: &str, value: String| fields.row(vec![name.to_string(), value]);
    field("id", cell(saga.get("id")));
    field("name", cell(saga.get("name")));
    field("key", cell(saga.get("key")));
    field("state", state(saga));
    if let Some(paused) = saga.get("paused_at").filter(|p| p.is_string()) {
        field("paused since", time(Some(paused), true));
    }
    if let Some(mode) = saga.get("mode") {
        field("mode", cell(Some(mode)));
    }
    field("created", time(saga.get("created_at"), false));
    field("updated", time(saga.get("updated_at"), false));
    field("deadline", time(saga.get("deadline"), false));
    if let Some(check_back) = saga.get("check_back").filter(|c| !c.is_null()) {
        field("check-back", check_back_line(check_back));
    }
    field("payload", cell(saga.get("payload")));

    let steps = saga
        .get("steps")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    // The retry time is a column only while some step waits out a backoff.
    let waiting = steps
        .iter()
        .any(|s| s.get("retry_at").is_some_and(|r| !r.is_null()));
    let mut header = vec!["STEP", "STATE", "PARTICIPANT", "ATTEMPTS", "COMP. ATTEMPTS"];
    if waiting {
        header.push("RETRY AT");
    }
    header.push("ERROR");
    let mut table = Table::new(header);
    for step in steps {
        let mut row = vec![
            cell(step.get("name")),
            cell(step.get("state")),
            cell(step.get("participant")),
            cell(step.get("attempts")),
            cell(step.get("compensation_attempts")),
        ];
        if waiting {
            row.push(time(step.get("retry_at"), true));
        }
        row.push(cell(step.get("error")));
        table.row(row);
    }
    format!("{}\n{}", fields.render(), table.render())
}

/// A prepared saga's check-back: whom it asks, how often it asked, when next.
fn check_back_line(check_back: &Value) -> String {
    let whom = match (check_back.get("participant"), check_back.get("url")) {
        (Some(p), _) if !p.is_null() => format!("participant {}", cell(Some(p))),
        (_, Some(u)) if !u.is_null() => format!("url {}", cell(Some(u))),
        _ => "-".to_string(),
    };
    format!(
        "{whom}, attempt {} of {}, next at {}",
        cell(check_back.get("attempts")),
        cell(check_back.get("max_attempts")),
        time(check_back.get("next_at"), true)
    )
}

/// `GET /api/v1/sagas/{id}/events`: the event log, oldest first.
pub fn event_log(doc: &Value) -> String {
    let mut table = Table::new(vec!["SEQ", "AT", "TYPE", "STEP", "ATTEMPT", "DETAIL"]);
    for event in items(doc) {
        table.row(vec![
            cell(event.get("seq")),
            time(event.get("at"), true),
            cell(event.get("type")),
            cell(event.get("step")),
            cell(event.get("attempt")),
            cell(event.get("detail")),
        ]);
    }
    table.render()
}

/// A name's pause or resume: whether its sagas are held now.
pub fn name_changed(answer: &Value) -> String {
    let name = cell(answer.get("name"));
    match answer.get("paused_at").filter(|p| p.is_string()) {
        Some(since) => format!(
            "sagas named {name} are paused since {}\n",
            time(Some(since), true)
        ),
        None => format!("sagas named {name} are not paused\n"),
    }
}

/// `GET /api/v1/saga-names/paused`.
pub fn paused_names(doc: &Value) -> String {
    let names = items(doc);
    if names.is_empty() {
        return "no saga name is paused\n".to_string();
    }
    let mut table = Table::new(vec!["NAME", "PAUSED SINCE"]);
    for held in names {
        table.row(vec![
            cell(held.get("name")),
            time(held.get("paused_at"), true),
        ]);
    }
    table.render()
}

/// How far a bulk action got, on one line: `running: 420 of 1000 done (400 applied, 0 unchanged,
/// 20 skipped), 580 pending`.
pub fn bulk_progress(bulk: &Value) -> String {
    let count = |field: &str| bulk.get(field).and_then(Value::as_i64).unwrap_or(0);
    format!(
        "{} {}: {}: {} of {} done ({} applied, {} unchanged, {} skipped), {} pending",
        cell(bulk.get("action")),
        cell(bulk.get("id")),
        cell(bulk.get("state")),
        count("applied") + count("unchanged") + count("skipped"),
        count("total"),
        count("applied"),
        count("unchanged"),
        count("skipped"),
        count("pending"),
    )
}

/// `GET /api/v1/bulk-actions/{id}`: its fields and its progress.
pub fn bulk_action(bulk: &Value) -> String {
    let mut fields = Table::fields();
    let mut field = |name: &str, value: String| fields.row(vec![name.to_string(), value]);
    field("id", cell(bulk.get("id")));
    field("action", cell(bulk.get("action")));
    field("filter", cell(bulk.get("filter")));
    if let Some(note) = bulk.get("note").filter(|n| !n.is_null()) {
        field("note", cell(Some(note)));
    }
    field("state", cell(bulk.get("state")));
    field("created", time(bulk.get("created_at"), false));
    field("finished", time(bulk.get("finished_at"), false));
    for count in ["total", "applied", "unchanged", "skipped", "pending"] {
        field(count, cell(bulk.get(count)));
    }
    fields.render()
}

/// `GET /api/v1/bulk-actions`: one bulk action per line.
pub fn bulk_action_list(doc: &Value) -> String {
    let actions = items(doc);
    let mut out = if actions.is_empty() {
        "no bulk actions\n".to_string()
    } else {
        let mut table = Table::new(vec![
            "ID",
            "ACTION",
            "STATE",
            "TOTAL",
            "APPLIED",
            "UNCHANGED",
            "SKIPPED",
            "PENDING",
            "CREATED",
            "FILTER",
        ]);
        for bulk in actions {
            table.row(vec![
                cell(bulk.get("id")),
                cell(bulk.get("action")),
                cell(bulk.get("state")),
                cell(bulk.get("total")),
                cell(bulk.get("applied")),
                cell(bulk.get("unchanged")),
                cell(bulk.get("skipped")),
                cell(bulk.get("pending")),
                time(bulk.get("created_at"), false),
                cell(bulk.get("filter")),
            ]);
        }
        table.render()
    };
    if let Some(cursor) = doc.get("next").filter(|c| !c.is_null()) {
        out.push_str(&format!(
            "more bulk actions: pass --before {} for the next page\n",
            cell(Some(cursor))
        ));
    }
    out
}

/// `GET /api/v1/bulk-actions/{id}/sagas`: one saga per line, with its outcome and why.
pub fn bulk_sagas(doc: &Value) -> String {
    let sagas = items(doc);
    let mut out = if sagas.is_empty() {
        "no sagas\n".to_string()
    } else {
        let mut table = Table::new(vec!["SAGA", "OUTCOME", "DONE", "REASON"]);
        for saga in sagas {
            let outcome = match saga.get("outcome") {
                None | Some(Value::Null) => "pending".to_string(),
                outcome => cell(outcome),
            };
            table.row(vec![
                cell(saga.get("saga_id")),
                outcome,
                time(saga.get("done_at"), false),
                cell(saga.get("reason")),
            ]);
        }
        table.render()
    };
    if let Some(cursor) = doc.get("next").filter(|c| !c.is_null()) {
        out.push_str(&format!(
            "more sagas: pass --after {} (with the same --outcome) for the next page\n",
            cell(Some(cursor))
        ));
    }
    out
}

/// An operator's action answered the saga document: where the saga stands now.
pub fn saga_changed(saga: &Value) -> String {
    format!("saga {} is now {}\n", cell(saga.get("id")), state(saga))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bulk_retry() -> Value {
        json!({
            "id": "0190c0de-0000-7000-8000-00000000b001", "action": "retry",
            "filter": {"state": ["failed"]}, "note": null, "state": "running",
            "created_at": "2026-05-01T12:00:00Z", "finished_at": null,
            "total": 1000, "applied": 400, "unchanged": 0, "skipped": 20, "pending": 580,
        })
    }

    #[test]
    fn a_bulk_action_shows_its_progress() {
        assert_eq!(
            bulk_progress(&bulk_retry()),
            "retry 0190c0de-0000-7000-8000-00000000b001: running: 420 of 1000 done (400 applied, \
             0 unchanged, 20 skipped), 580 pending"
        );
        let detail = bulk_action(&bulk_retry());
        assert!(
            detail.contains("filter     {\"state\":[\"failed\"]}"),
            "{detail}"
        );
        assert!(detail.contains("pending    580"), "{detail}");
        assert!(!detail.contains("note"), "{detail}");
        let list = bulk_action_list(&json!({"items": [bulk_retry()], "next": "c1"}));
        assert!(list.starts_with("ID "), "{list}");
        assert!(
            list.ends_with("pass --before c1 for the next page\n"),
            "{list}"
        );
        let sagas = bulk_sagas(&json!({"items": [
            {"saga_id": "s1", "outcome": "skipped", "reason": "the saga is committed\u{1b}",
             "done_at": "2026-05-01T12:00:01Z"},
            {"saga_id": "s2", "outcome": null, "reason": null, "done_at": null},
        ], "next": null}));
        assert!(
            sagas.contains("s1    skipped  2026-05-01 12:00:01Z  the saga is committed\\u{1b}"),
            "{sagas}"
        );
        assert!(sagas.contains("s2    pending  -"), "{sagas}");
    }

    fn failed_saga() -> Value {
        json!({
            "id": "0190c0de-0000-7000-8000-000000000001",
            "name": "place-order",
            "key": "order-8812",
            "state": "failed",
            "payload": {"order_id": 8812},
            "created_at": "2026-05-01T12:00:00.123456Z",
            "updated_at": "2026-05-01T12:00:05.5+02:00",
            "deadline": null,
            "steps": [
                {"name": "reserve", "participant": "inventory", "action": "reserve",
                 "compensation": "release", "state": "compensation_failed", "attempts": 1,
                 "compensation_attempts": 10, "output": {"reserved": true},
                 "error": "the undo is broken", "after": [], "retry_at": null},
                {"name": "charge", "participant": "payments", "action": "charge",
                 "compensation": "refund", "state": "failed", "attempts": 3,
                 "compensation_attempts": 0, "output": null, "error": {"code": 51},
                 "after": ["reserve"], "retry_at": null}
            ]
        })
    }

    #[test]
    fn a_saga_shows_its_fields_then_its_steps() {
        assert_eq!(
            saga_detail(&failed_saga()),
            "\
id        0190c0de-0000-7000-8000-000000000001
name      place-order
key       order-8812
state     failed
created   2026-05-01 12:00:00Z
updated   2026-05-01 10:00:05Z
deadline  -
payload   {\"order_id\":8812}

STEP     STATE                PARTICIPANT  ATTEMPTS  COMP. ATTEMPTS  ERROR
reserve  compensation_failed  inventory    1         10              the undo is broken
charge   failed               payments     3         0               {\"code\":51}
"
        );
    }

    #[test]
    fn a_step_waiting_out_a_backoff_shows_when_it_goes_out() {
        let mut saga = failed_saga();
        saga["state"] = json!("running");
        saga["steps"][1]["state"] = json!("running");
        saga["steps"][1]["retry_at"] = json!("2026-05-01T12:10:00.25Z");
        let text = saga_detail(&saga);
        let steps = text.split_once("\n\n").map_or("", |(_, steps)| steps);
        assert_eq!(
            steps,
            "\
STEP     STATE                PARTICIPANT  ATTEMPTS  COMP. ATTEMPTS  RETRY AT                  ERROR
reserve  compensation_failed  inventory    1         10              -                         the undo is broken
charge   running              payments     3         0               2026-05-01 12:10:00.250Z  {\"code\":51}
"
        );
    }

    #[test]
    fn a_prepared_saga_shows_its_check_back() {
        let saga = json!({
            "id": "s", "name": "n", "key": null, "state": "prepared", "mode": "prepare",
            "check_back": {"participant": "orders", "attempts": 1, "max_attempts": 5,
                           "next_at": "2026-05-01T12:00:01Z"},
            "steps": []
        });
        let text = saga_detail(&saga);
        assert!(text.contains("\nmode        prepare\n"), "{text}");
        assert!(
            text.contains("\ncheck-back  participant orders, attempt 1 of 5, next at 2026-05-01 12:00:01.000Z\n"),
            "{text}"
        );
    }

    #[test]
    fn the_list_ends_with_the_cursors_of_the_pages_beside_it() {
        let page = json!({
            "items": [
                {"id": "s2", "name": "place-order", "key": null, "state": "running",
                 "created_at": "2026-05-01T12:00:02Z", "updated_at": "2026-05-01T12:00:03Z"},
                {"id": "s1", "name": "refund", "key": "k-1", "state": "committed",
                 "created_at": "2026-05-01T12:00:00Z", "updated_at": "2026-05-01T12:00:01Z"}
            ],
            "next": "s1",
            "prev": "s2"
        });
        assert_eq!(
            saga_list(&page),
            "\
ID  NAME         KEY  STATE      CREATED               UPDATED
s2  place-order  -    running    2026-05-01 12:00:02Z  2026-05-01 12:00:03Z
s1  refund       k-1  committed  2026-05-01 12:00:00Z  2026-05-01 12:00:01Z
more sagas: pass --before s1 (with the same filters) for the next page
newer sagas: pass --after s2 (with the same filters) for the page before
"
        );
        assert_eq!(saga_list(&json!({"items": [], "next": null})), "no sagas\n");
    }

    #[test]
    fn events_show_milliseconds_and_compact_detail() {
        let log = json!({"items": [
            {"seq": 1, "at": "2026-05-01T12:00:00.1Z", "type": "submitted", "step": null,
             "attempt": null, "detail": {"steps": 2}},
            {"seq": 12, "at": "2026-05-01T12:00:00.123456Z", "type": "dispatched",
             "step": "reserve", "attempt": 1, "detail": null}
        ]});
        assert_eq!(
            event_log(&log),
            "\
SEQ  AT                        TYPE        STEP     ATTEMPT  DETAIL
1    2026-05-01 12:00:00.100Z  submitted   -        -        {\"steps\":2}
12   2026-05-01 12:00:00.123Z  dispatched  reserve  1        -
"
        );
    }

    #[test]
    fn an_action_says_where_the_saga_stands() {
        assert_eq!(
            saga_changed(&failed_saga()),
            "saga 0190c0de-0000-7000-8000-000000000001 is now failed\n"
        );
    }

    #[test]
    fn a_names_pause_says_whether_it_holds() {
        assert_eq!(
            name_changed(&json!({"name": "place-order", "paused_at": "2026-05-01T12:00:01.250Z"})),
            "sagas named place-order are paused since 2026-05-01 12:00:01.250Z\n"
        );
        assert_eq!(
            name_changed(&json!({"name": "place-order", "paused_at": null})),
            "sagas named place-order are not paused\n"
        );
        assert_eq!(
            paused_names(
                &json!({"items": [{"name": "place-order", "paused_at": "2026-05-01T12:00:01Z"}]})
            ),
            "NAME         PAUSED SINCE\nplace-order  2026-05-01 12:00:01.000Z\n"
        );
        assert_eq!(
            paused_names(&json!({"items": []})),
            "no saga name is paused\n"
        );
    }

    #[test]
    fn a_paused_saga_says_so_wherever_its_state_shows() {
        let mut saga = failed_saga();
        saga["state"] = json!("running");
        saga["paused_at"] = json!("2026-05-01T12:00:01.250Z");
        assert_eq!(
            saga_changed(&saga),
            "saga 0190c0de-0000-7000-8000-000000000001 is now running (paused)\n"
        );
        let detail = saga_detail(&saga);
        assert!(detail.contains("running (paused)"), "{detail}");
        assert!(
            detail.contains("paused since  2026-05-01 12:00:01.250Z"),
            "{detail}"
        );
        let list = saga_list(&json!({"items": [saga], "next": null}));
        assert!(list.contains("running (paused)"), "{list}");
    }

    #[test]
    fn saga_data_cannot_break_lines_or_drive_the_terminal() {
        let mut saga = failed_saga();
        saga["key"] = json!("evil\n\u{1b}[2J");
        saga["steps"][0]["error"] = json!("line one\nline two");
        let text = saga_detail(&saga);
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("key       evil\\n\\u{1b}[2J\n"), "{text}");
        assert!(text.contains("line one\\nline two"), "{text}");
        assert_eq!(
            text.lines().count(),
            12,
            "one line per field and step: {text}"
        );
    }

    #[test]
    fn what_is_missing_or_not_a_time_still_prints() {
        let text = saga_detail(&json!({"id": "s", "created_at": "yesterday"}));
        assert!(text.contains("created   yesterday\n"), "{text}");
        assert!(text.contains("state     -\n"), "{text}");
        assert_eq!(
            event_log(&json!({})),
            "SEQ  AT  TYPE  STEP  ATTEMPT  DETAIL\n"
        );
    }
}
