//! The list's search (and the overview's in-flight list) against the real Postgres, each test in a
//! database of its own: every filter alone and combined, and pages in both directions. Sagas are
//! written as rows, with the ids and times each test needs.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use diesel::connection::SimpleConnection;
use serde_json::json;

use super::*;
use crate::store::test_db::Db;

/// A saga to write: what the filters look at.
struct Row {
    name: &'static str,
    key: Option<&'static str>,
    state: &'static str,
    created: DateTime<Utc>,
    /// Its last write: its finish when `state` is final.
    updated: DateTime<Utc>,
    /// (step name, participant, error) of each step.
    steps: Vec<(&'static str, &'static str, Option<&'static str>)>,
}

fn row(name: &'static str, state: &'static str, created: DateTime<Utc>) -> Row {
    Row {
        name,
        key: None,
        state,
        created,
        updated: created + Duration::seconds(1),
        steps: vec![("reserve", "inventory", None), ("charge", "payments", None)],
    }
}

fn db() -> Db {
    Db::new(2)
}

impl Db {
    /// Writes `row` with an id of its creation's millisecond (as a UUIDv7 is), answers the id.
    fn write(&self, row: &Row) -> Uuid {
        let ms = u64::try_from(row.created.timestamp_millis()).expect("after 1970");
        let mut bytes = *Uuid::now_v7().as_bytes();
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        let id = Uuid::from_bytes(bytes);
        let steps: Vec<_> = row
            .steps
            .iter()
            .map(|(name, participant, _)| {
                json!({"name": name, "participant": participant, "action": "act"})
            })
            .collect();
        let mut body = json!({"name": row.name, "steps": steps});
        if let Some(key) = row.key {
            body["key"] = json!(key);
        }
        let definition = crate::submission::parse_submission(&body).expect("a valid saga");
        let terms = step_terms(&definition).to_string();
        let definition = serde_json::to_string(&definition).expect("json");
        let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut sql = format!(
            "INSERT INTO sagas (id, name, idempotency_key, definition, state, created_at, updated_at,
                                partition, step_terms)
             VALUES ('{id}', {name}, {key}, {definition}, '{state}', '{created}', '{updated}', 0,
                     {terms});",
            name = quoted(row.name),
            key = row.key.map_or("NULL".into(), quoted),
            definition = quoted(&definition),
            state = row.state,
            created = row.created.to_rfc3339(),
            updated = row.updated.to_rfc3339(),
            terms = quoted(&terms),
        );
        for (position, (name, _, error)) in row.steps.iter().enumerate() {
            sql.push_str(&format!(
                "INSERT INTO saga_steps (saga_id, position, name, state, attempts,
                     compensation_attempts, compensation_attempt_limit, error, refused)
                 VALUES ('{id}', {position}, {name}, 'succeeded', 1, 0, 10, {error}, false);",
                name = quoted(name),
                error = error.map_or("NULL".into(), quoted),
            ));
        }
        self.pool
            .get()
            .expect("connection")
            .batch_execute(&sql)
            .expect("statement");
        id
    }

    /// The ids of the first page (up to 100) the filter matches, newest first.
    fn matching(&self, filter: SagaFilter) -> Vec<Uuid> {
        self.page(filter, 100, None)
    }

    fn page(&self, filter: SagaFilter, limit: i64, cursor: Option<Cursor>) -> Vec<Uuid> {
        let page = ListFilter {
            filter,
            limit,
            cursor,
        };
        self.queries()
            .list(&page)
            .expect("a page")
            .iter()
            .map(|s| s.id)
            .collect()
    }
}

/// `ids` newest first, as the list answers.
fn newest_first(ids: &[Uuid]) -> Vec<Uuid> {
    let mut ids = ids.to_vec();
    ids.sort_by(|a, b| b.cmp(a));
    ids
}

#[test]
fn each_filter_alone_selects_exactly_its_sagas() {
    let db = db();
    // Postgres keeps microseconds.
    let t0 = (Utc::now() - Duration::days(3)).trunc_subsecs(6);
    let at = |minutes: i64| t0 + Duration::minutes(minutes);
    let keyed = db.write(&Row {
        key: Some("order-1"),
        ..row("order", "committed", at(0))
    });
    // The same key under another name is another saga.
    let keyed_refund = db.write(&Row {
        key: Some("order-1"),
        ..row("refund", "committed", at(1))
    });
    let declined = db.write(&Row {
        steps: vec![
            ("reserve", "inventory", None),
            ("charge", "payments", Some("Card DECLINED by the bank")),
        ],
        ..row("order", "compensated", at(2))
    });
    let shipping = db.write(&Row {
        steps: vec![("ship", "shipping", Some("no courier (100%_sure)"))],
        updated: at(3) + Duration::hours(5),
        ..row("ship", "aborted", at(3))
    });
    let running = db.write(&Row {
        updated: at(60),
        ..row("order", "running", at(4))
    });
    let failed = db.write(&Row {
        steps: vec![("reserve", "inventory", Some("the warehouse is gone"))],
        updated: at(5) + Duration::seconds(1),
        ..row("order", "failed", at(5))
    });
    let all = newest_first(&[keyed, keyed_refund, declined, shipping, running, failed]);
    let f = SagaFilter::default;

    assert_eq!(db.matching(f()), all);
    assert_eq!(
        db.matching(SagaFilter {
            key: Some("order-1".into()),
            ..f()
        }),
        [keyed_refund, keyed]
    );
    assert!(db
        .matching(SagaFilter {
            key: Some("order-2".into()),
            ..f()
        })
        .is_empty());

    // The creation window: at or after, strictly before, to the microsecond of `created_at`.
    let created = |after: Option<DateTime<Utc>>, before: Option<DateTime<Utc>>| {
        db.matching(SagaFilter {
            created_after: after,
            created_before: before,
            ..f()
        })
    };
    assert_eq!(
        created(Some(at(2)), None),
        [failed, running, shipping, declined]
    );
    assert_eq!(
        created(Some(at(2) + Duration::microseconds(1)), None),
        [failed, running, shipping]
    );
    assert_eq!(created(None, Some(at(2))), [keyed_refund, keyed]);
    assert_eq!(
        created(None, Some(at(2) + Duration::microseconds(1))),
        [declined, keyed_refund, keyed]
    );
    assert_eq!(
        created(Some(at(1)), Some(at(4))),
        [shipping, declined, keyed_refund]
    );
    assert!(created(Some(at(4)), Some(at(1))).is_empty());

    // The finish window: final sagas only (never `running` nor `failed`), by `finished_at`.
    let finished = |after: Option<DateTime<Utc>>, before: Option<DateTime<Utc>>| {
        db.matching(SagaFilter {
            finished_after: after,
            finished_before: before,
            ..f()
        })
    };
    assert_eq!(
        finished(Some(t0 - Duration::days(1)), None),
        [shipping, declined, keyed_refund, keyed]
    );
    assert_eq!(finished(Some(at(3) + Duration::hours(5)), None), [shipping]);
    assert_eq!(
        finished(None, Some(at(3) + Duration::hours(5))),
        [declined, keyed_refund, keyed]
    );

    // Participants and step names, from the definition.
    let participant = |p: &str| {
        db.matching(SagaFilter {
            participant: Some(p.into()),
            ..f()
        })
    };
    assert_eq!(participant("shipping"), [shipping]);
    assert_eq!(
        participant("inventory"),
        newest_first(&[keyed, keyed_refund, declined, running, failed])
    );
    assert!(participant("Shipping").is_empty(), "names match exactly");
    assert!(participant("charge").is_empty(), "a step is no participant");
    let step = |s: &str| {
        db.matching(SagaFilter {
            step: Some(s.into()),
            ..f()
        })
    };
    assert_eq!(step("ship"), [shipping]);
    assert_eq!(
        step("charge"),
        newest_first(&[keyed, keyed_refund, declined, running])
    );
    assert!(step("payments").is_empty(), "a participant is no step");

    // Error text: contained, in any case; `%`, `_` and `\` are themselves.
    let error = |text: &str| {
        db.matching(SagaFilter {
            error: Some(text.into()),
            ..f()
        })
    };
    assert_eq!(error("declined"), [declined]);
    assert_eq!(error("card declined"), [declined]);
    assert_eq!(error("WAREHOUSE"), [failed]);
    assert_eq!(error("E"), newest_first(&[declined, shipping, failed]));
    assert_eq!(error("100%_"), [shipping]);
    assert!(error("1000").is_empty());
    assert_eq!(error("%"), [shipping]);
    assert_eq!(error("_"), [shipping]);
    assert!(error("\\").is_empty());
    assert!(error("card  declined").is_empty());
}

#[test]
fn filters_combine_as_and() {
    let db = db();
    let t0 = (Utc::now() - Duration::days(1)).trunc_subsecs(6);
    let at = |minutes: i64| t0 + Duration::minutes(minutes);
    let declined = |name, state, created| Row {
        steps: vec![
            ("reserve", "inventory", None),
            ("charge", "payments", Some("card declined")),
        ],
        ..row(name, state, created)
    };
    let a = db.write(&declined("order", "compensated", at(0)));
    let b = db.write(&declined("order", "failed", at(1)));
    // Of another name: never among the orders.
    db.write(&declined("refund", "compensated", at(2)));
    let d = db.write(&row("order", "compensated", at(3)));
    let e = db.write(&Row {
        key: Some("k"),
        ..declined("order", "compensated", at(4))
    });
    let compensated_orders = SagaFilter {
        states: vec![SagaState::Compensated],
        name: Some("order".into()),
        ..SagaFilter::default()
    };
    assert_eq!(db.matching(compensated_orders.clone()), [e, d, a]);
    let declined_payments = SagaFilter {
        participant: Some("payments".into()),
        step: Some("charge".into()),
        error: Some("DECLINED".into()),
        ..compensated_orders.clone()
    };
    assert_eq!(db.matching(declined_payments.clone()), [e, a]);
    assert_eq!(
        db.matching(SagaFilter {
            created_before: Some(at(4)),
            ..declined_payments.clone()
        }),
        [a]
    );
    assert_eq!(
        db.matching(SagaFilter {
            key: Some("k".into()),
            finished_after: Some(at(4)),
            ..declined_payments.clone()
        }),
        [e]
    );
    // A participant with the step of another participant's name matches nothing here.
    assert!(db
        .matching(SagaFilter {
            participant: Some("inventory".into()),
            step: Some("ship".into()),
            ..SagaFilter::default()
        })
        .is_empty());
    assert_eq!(
        db.matching(SagaFilter {
            states: vec![SagaState::Failed, SagaState::Compensated],
            name: Some("order".into()),
            error: Some("declined".into()),
            ..SagaFilter::default()
        }),
        [e, b, a]
    );
}

#[test]
fn pages_go_both_ways_without_a_gap_or_a_repeat() {
    let db = db();
    let t0 = Utc::now() - Duration::hours(1);
    for i in 0..23 {
        let state = if i % 3 == 0 { "running" } else { "committed" };
        db.write(&row("order", state, t0 + Duration::milliseconds(i * 7)));
    }
    let committed = SagaFilter {
        states: vec![SagaState::Committed],
        ..SagaFilter::default()
    };
    let expected = db.matching(committed.clone());
    assert_eq!(expected.len(), 15);

    // Older, page by page, from the newest.
    let mut walked: Vec<Uuid> = Vec::new();
    let mut cursor = None;
    loop {
        let page = db.page(committed.clone(), 4, cursor);
        walked.extend(&page);
        if page.len() < 4 {
            break;
        }
        cursor = page.last().map(|id| Cursor::Before(*id));
    }
    assert_eq!(walked, expected);

    // Newer, page by page, from before the oldest: each page is the sagas right above the cursor,
    // newest first.
    let mut walked = Vec::new();
    let mut cursor = Cursor::After(Uuid::nil());
    loop {
        let page = db.page(committed.clone(), 4, Some(cursor));
        let mut sorted = page.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(page, sorted, "newest first");
        walked.splice(0..0, page.iter().copied());
        if page.len() < 4 {
            break;
        }
        cursor = Cursor::After(page[0]);
    }
    assert_eq!(walked, expected);

    // From the middle: after the 10th saga come the four above it.
    let tenth = expected[9];
    assert_eq!(
        db.page(committed.clone(), 4, Some(Cursor::After(tenth))),
        expected[5..9]
    );
    assert_eq!(
        db.page(committed.clone(), 4, Some(Cursor::Before(tenth))),
        expected[10..14]
    );
    // Past either end, nothing.
    assert!(db
        .page(committed.clone(), 4, Some(Cursor::After(expected[0])))
        .is_empty());
    assert!(db
        .page(committed, 4, Some(Cursor::Before(expected[14])))
        .is_empty());
}

#[test]
fn the_creation_window_reads_an_id_range() {
    let at = Utc::now();
    let id = first_id_at(at);
    let ms = u64::try_from(at.timestamp_millis()).expect("after 1970");
    assert_eq!(id.as_u128() >> 80, u128::from(ms));
    assert_eq!(id.as_u128() & ((1 << 80) - 1), 0);
    assert_eq!(first_id_at(DateTime::<Utc>::MIN_UTC), Uuid::nil());
    assert_eq!(
        first_id_at(DateTime::<Utc>::MAX_UTC).as_u128() >> 80,
        (1 << 48) - 1
    );
}

#[test]
fn a_like_pattern_matches_its_text_only() {
    assert_eq!(containing("card"), "%card%");
    assert_eq!(containing("50%_off\\"), "%50\\%\\_off\\\\%");
}

#[test]
fn the_writer_stores_the_terms_the_sql_function_gives_older_rows() {
    #[derive(QueryableByName)]
    struct Terms {
        #[diesel(sql_type = Jsonb)]
        terms: serde_json::Value,
    }
    let db = db();
    let definition = crate::submission::parse_submission(&json!({
        "name": "order",
        "steps": [
            {"name": "charge", "participant": "payments", "action": "charge"},
            {"name": "reserve", "participant": "inventory", "action": "reserve"},
            {"name": "refund", "participant": "payments", "action": "refund"},
        ]
    }))
    .expect("a valid saga");
    let stored: Terms = diesel::sql_query("SELECT saga_step_terms($1) AS terms")
        .bind::<Jsonb, _>(serde_json::to_value(&definition).expect("json"))
        .get_result(&mut db.pool.get().expect("connection"))
        .expect("terms");
    assert_eq!(step_terms(&definition), stored.terms);
    assert_eq!(
        step_terms(&definition),
        json!([
            "participant:inventory",
            "participant:payments",
            "step:charge",
            "step:refund",
            "step:reserve"
        ])
    );
}

/// The overview's in-flight list reads each state on its own (`dashboard.rs`): merged, it is the
/// newest of all the asked states, never a final one, cut at the limit, and filtered by name.
#[test]
fn the_in_flight_list_merges_its_states_newest_first() {
    use crate::store::dashboard::InFlightFilter;
    let db = db();
    let start = Utc::now().trunc_subsecs(3) - Duration::days(3);
    let at = |minutes| start + Duration::minutes(minutes);
    let mut unfinished = Vec::new();
    for (i, state) in [
        "failed",
        "running",
        "compensating",
        "prepared",
        "failed",
        "running",
    ]
    .into_iter()
    .enumerate()
    {
        let minutes = i64::try_from(i).expect("few") * 10;
        unfinished.push((state, db.write(&row("order", state, at(minutes)))));
        // A finished saga between each two: never listed.
        db.write(&row("order", "committed", at(minutes + 5)));
    }
    let refund = db.write(&row("refund", "running", at(100)));
    let q = db.queries();
    let listed = |filter: InFlightFilter| -> Vec<Uuid> {
        q.in_flight(&filter)
            .expect("listed")
            .into_iter()
            .map(|s| s.id)
            .collect()
    };
    let ids = |of: &[&str]| -> Vec<Uuid> {
        let chosen: Vec<Uuid> = unfinished
            .iter()
            .filter(|(state, _)| of.contains(state))
            .map(|(_, id)| *id)
            .collect();
        newest_first(&chosen)
    };

    let mut all = vec![refund];
    all.extend(ids(&["failed", "running", "compensating", "prepared"]));
    let everything = InFlightFilter {
        limit: 100,
        ..InFlightFilter::default()
    };
    assert_eq!(listed(everything.clone()), all);
    assert_eq!(
        listed(InFlightFilter {
            limit: 4,
            ..everything.clone()
        }),
        all[..4],
        "the newest four of every state together"
    );
    assert_eq!(
        listed(InFlightFilter {
            states: vec![
                crate::saga::SagaState::Failed,
                crate::saga::SagaState::Prepared
            ],
            ..everything.clone()
        }),
        ids(&["failed", "prepared"])
    );
    assert_eq!(
        listed(InFlightFilter {
            name: Some("ORD".into()),
            ..everything
        }),
        ids(&["failed", "running", "compensating", "prepared"]),
        "the name contains the text, in any case"
    );
}
