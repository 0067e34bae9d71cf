//! The real binary as a process: SIGKILL mid-flight and resume, SIGKILL between a commit and its
//! publish and between a publish and its confirm, a paused saga across a SIGKILL, SIGTERM, `migrate`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use contract::CommandKind;
use e2e::api::{expect_json, idempotency_key, state, step};
use e2e::defs::{saga, three_quick_steps, QUICK_STEPS};
use e2e::process::run_to_completion;
use e2e::{
    connected_through, eventually, Api, Behaviour, CoordinatorProcess, FakeParticipant,
    ReceivedCommand, Reply, TcpProxy, TestDb, TestNamespace, BULK_TIMEOUT, SAGA_TIMEOUT,
};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_coordinator-under-test");

async fn new_db() -> TestDb {
    tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database")
}

async fn start_process(db: &TestDb, ns: &TestNamespace) -> CoordinatorProcess {
    CoordinatorProcess::start_on(BIN, db, ns).await
}

/// The binary on `db` and `ns`, reaching RabbitMQ through `proxy`.
async fn start_via(db: &TestDb, ns: &TestNamespace, proxy: &TcpProxy) -> CoordinatorProcess {
    CoordinatorProcess::start_on_with(BIN, db, ns, vec![("SAGA_AMQP_URL", proxy.amqp_url())]).await
}

/// Whether a participant answered this command with `success`.
fn succeeded(p: &FakeParticipant, cmd: &ReceivedCommand) -> bool {
    p.replies_to(cmd.seq)
        .iter()
        .any(|r| r.body["outcome"] == "success")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_then_restart_finishes_every_saga_without_losing_effects() {
    let db = new_db().await;
    let ns = TestNamespace::new();
    let mut first = start_process(&db, &ns).await;

    // Slow participants; p3 refuses the sagas whose payload says so.
    let mut participants = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let me = name.to_string();
        participants.push(
            FakeParticipant::start(&ns, name, move |cmd| {
                let refuse = me == "p3" && cmd.body["saga_payload"]["refuse"] == true;
                let reply = if cmd.is_action() && refuse {
                    Reply::failure("refused")
                } else {
                    Reply::success_with(FakeParticipant::default_output(&me, cmd))
                };
                Behaviour::DelayThenReply(Duration::from_millis(400), reply)
            })
            .await,
        );
    }

    let mut expected: HashMap<String, &str> = HashMap::new();
    for i in 0..30 {
        let refuse = i % 5 == 4;
        let mut definition = saga(
            "crash-me",
            vec![
                e2e::defs::step("s1", "p1"),
                e2e::defs::step("s2", "p2"),
                e2e::defs::step("s3", "p3"),
            ],
        );
        definition["payload"] = json!({"i": i, "refuse": refuse});
        let id = first.api().submit_id(&definition).await;
        expected.insert(id, if refuse { "compensated" } else { "committed" });
    }
    let received =
        |ps: &[FakeParticipant]| -> usize { ps.iter().map(|p| p.commands().len()).sum() };
    eventually("the sagas to be mid-flight", BULK_TIMEOUT, async || {
        (received(&participants) >= 20).then_some(())
    })
    .await;
    first.kill();
    let at_kill = received(&participants);
    // 24 sagas × 3 actions + 6 × (3 actions + 2 compensations): far from done when killed.
    assert!(
        at_kill < 102,
        "the coordinator was killed mid-flight ({at_kill} commands)"
    );

    let second = start_process(&db, &ns).await;
    let api = second.api();
    let mut documents: HashMap<String, Value> = HashMap::new();
    for (id, outcome) in &expected {
        let doc = api.wait_for_state(id, &[*outcome], BULK_TIMEOUT).await;
        documents.insert(id.clone(), doc);
    }
    assert!(
        received(&participants) > at_kill,
        "the second coordinator dispatched commands"
    );

    // No effect is lost: every action a participant carried out belongs to a committed saga or was
    // compensated; every committed saga's steps were all carried out, with the participant's output.
    let by_name: HashMap<&str, &FakeParticipant> =
        participants.iter().map(|p| (p.name(), p)).collect();
    for (id, doc) in &documents {
        for (s, p) in [("s1", "p1"), ("s2", "p2"), ("s3", "p3")] {
            let participant = by_name[p];
            let commands = participant.commands_for(id);
            let acted = commands
                .iter()
                .any(|c| c.is_action() && succeeded(participant, c));
            let compensated = commands
                .iter()
                .any(|c| c.is_compensation() && succeeded(participant, c));
            let step_doc = step(doc, s);
            match expected[id] {
                "committed" => {
                    assert!(acted, "saga {id} committed but {p} never carried out {s}");
                    assert!(!compensated, "saga {id} committed but {s} was compensated");
                    assert_eq!(state(step_doc), "succeeded", "{doc:#}");
                    assert_eq!(
                        step_doc["output"],
                        json!({"by": p, "key": idempotency_key(id, Some(s), CommandKind::Action)}),
                        "the participant's output is kept: {doc:#}"
                    );
                }
                _ if s == "s3" => {
                    assert!(!acted, "p3 refused saga {id}");
                    assert!(
                        !compensated,
                        "a refused step is not compensated (saga {id})"
                    );
                    assert_eq!(state(step_doc), "failed", "{doc:#}");
                }
                _ => {
                    assert!(acted, "saga {id}: {p} never carried out {s}");
                    assert!(
                        compensated,
                        "saga {id}: {s} took effect but was never compensated"
                    );
                    assert_eq!(state(step_doc), "compensated", "{doc:#}");
                }
            }
        }
    }
    // And nothing was done for sagas that do not exist.
    let known: HashSet<&String> = expected.keys().collect();
    for p in &participants {
        for c in p.commands() {
            assert!(known.contains(&c.saga_id().to_string()), "{c:?}");
        }
    }
}

/// The sagas of the tests that kill the process at a precise point: a handful, each of three steps.
const FEW: usize = 5;

/// The event types of a spent attempt.
const RETRY_EVENTS: [&str; 4] = ["timed_out", "dead_lettered", "retry_scheduled", "gave_up"];

/// Every saga of `ids` commits, and each of its steps took effect exactly once. A participant may
/// have received the step's action more than once (the contract allows duplicates), but always as
/// attempt 1 under the step's one idempotency key: copies of one command, one effect. A lost command
/// would show up as a second attempt (its timeout spent), and so would a coordinator that lost track
/// of one and sent it anew. So the document counts one attempt with the participant's output, the
/// event log shows no retry, and nothing else (no compensation, no other saga's command) was sent.
async fn each_committed_with_one_effect_per_step(
    api: &Api,
    ids: &[String],
    participants: &[FakeParticipant],
) {
    for id in ids {
        let doc = api.wait_for_state(id, &["committed"], SAGA_TIMEOUT).await;
        for ((s, p), participant) in QUICK_STEPS.iter().zip(participants) {
            let key = idempotency_key(id, Some(s), CommandKind::Action);
            let received: Vec<ReceivedCommand> = participant
                .commands_for(id)
                .into_iter()
                .filter(|c| c.step() == *s)
                .collect();
            assert!(!received.is_empty(), "saga {id}: {p} never received {s}");
            for c in &received {
                assert!(c.is_action(), "saga {id} committed, yet {p} got {c:?}");
                assert_eq!(
                    (c.attempt(), c.idempotency_key()),
                    (1, key.as_str()),
                    "saga {id}: {s} went out as another attempt or command: {c:?}"
                );
            }
            let step_doc = step(&doc, s);
            assert_eq!(state(step_doc), "succeeded", "{doc:#}");
            assert_eq!(
                step_doc["attempts"], 1,
                "saga {id}: {s} was retried: {doc:#}"
            );
            assert_eq!(
                step_doc["output"],
                json!({"by": p, "key": key}),
                "the participant's output is kept: {doc:#}"
            );
        }
        let retries: Vec<Value> = api
            .events(id)
            .await
            .into_iter()
            .filter(|e| {
                RETRY_EVENTS.contains(&e["type"].as_str().unwrap_or(""))
                    || e["attempt"].as_u64().is_some_and(|a| a != 1)
            })
            .collect();
        assert!(
            retries.is_empty(),
            "saga {id} spent an attempt: {retries:#?}"
        );
    }
    for p in participants {
        for c in p.commands() {
            assert!(ids.iter().any(|id| id == c.saga_id()), "{c:?}");
        }
        assert!(p.errors().is_empty(), "{}: {:?}", p.name(), p.errors());
    }
}

/// Killed between commit and publish. RabbitMQ is away, so the sagas are stored and their first
/// step dispatched (the transition that sends it is committed) while not one command has gone out;
/// then the process dies. Nothing in memory survives: the next process, with the broker back, must
/// find those commands and send them (none is lost: every saga commits) as the attempts they were
/// (none is applied twice: one attempt per step, each action once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_commit_and_publish_loses_no_command_and_applies_none_twice() {
    let db = new_db().await;
    let ns = TestNamespace::new();
    let proxy = TcpProxy::to_rabbitmq();
    let mut first = start_via(&db, &ns, &proxy).await;
    let participants = FakeParticipant::always_succeed_each(&ns, &QUICK_STEPS).await;
    connected_through(&proxy).await;
    proxy.outage();
    let mut ids = Vec::new();
    for i in 0..FEW {
        ids.push(
            first
                .api()
                .submit_id(&three_quick_steps(&format!("unpublished-{i}"), 5000))
                .await,
        );
    }
    for id in &ids {
        let doc = eventually("the first step dispatched", SAGA_TIMEOUT, async || {
            let doc = first.api().saga(id).await;
            (state(step(&doc, "s1")) == "running").then_some(doc)
        })
        .await;
        assert_eq!(step(&doc, "s1")["attempts"], 1, "{doc:#}");
        assert_eq!(state(step(&doc, "s2")), "pending", "{doc:#}");
    }
    let received: usize = participants.iter().map(|p| p.commands().len()).sum();
    assert_eq!(received, 0, "nothing was published before the kill");

    first.kill();
    proxy.resume();
    let second = start_via(&db, &ns, &proxy).await;
    each_committed_with_one_effect_per_step(second.api(), &ids, &participants).await;
}

/// Killed between publish and confirm. The proxy passes the coordinator's bytes to RabbitMQ but
/// holds RabbitMQ's: the first commands reach the participants, while neither their publisher
/// confirms nor the participants' replies get back. Then the process dies. The next process cannot
/// know those commands went out: sending them again is allowed (a duplicate of the same attempt),
/// but none may be lost and none may go out as a new attempt, so every saga commits with each step
/// applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_publish_and_confirm_loses_no_command_and_applies_none_twice() {
    let db = new_db().await;
    let ns = TestNamespace::new();
    let proxy = TcpProxy::to_rabbitmq();
    let mut first = start_via(&db, &ns, &proxy).await;
    let participants = FakeParticipant::always_succeed_each(&ns, &QUICK_STEPS).await;
    // Held from the start, the connection could not even be opened, and a participant's queue is
    // declared (which needs the broker's answer) before the first command to it: the hold begins
    // once the coordinator is connected and a saga has gone through all three.
    connected_through(&proxy).await;
    let warm_up = first
        .api()
        .submit_id(&three_quick_steps("warm-up", 5000))
        .await;
    first
        .api()
        .wait_for_state(&warm_up, &["committed"], SAGA_TIMEOUT)
        .await;
    proxy.hold_server_to_client();
    let mut ids = Vec::new();
    for i in 0..FEW {
        ids.push(
            first
                .api()
                .submit_id(&three_quick_steps(&format!("unconfirmed-{i}"), 5000))
                .await,
        );
    }
    // Published: p1 has every first command. Unconfirmed: nothing came back, not even the replies.
    eventually(
        "p1 to receive every first command",
        SAGA_TIMEOUT,
        async || {
            ids.iter()
                .all(|id| !participants[0].commands_for(id).is_empty())
                .then_some(())
        },
    )
    .await;
    for id in &ids {
        let doc = first.api().saga(id).await;
        assert_eq!(
            state(step(&doc, "s1")),
            "running",
            "no reply got back: {doc:#}"
        );
    }

    first.kill();
    proxy.release();
    let second = start_via(&db, &ns, &proxy).await;
    ids.push(warm_up);
    each_committed_with_one_effect_per_step(second.api(), &ids, &participants).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_a_saga_across_a_sigkill_and_resume_finishes_it() {
    let db = new_db().await;
    let ns = TestNamespace::new();
    let mut first = start_process(&db, &ns).await;
    // The first step answers a while after its command arrives: the saga is paused meanwhile.
    let slow = FakeParticipant::start(&ns, "slow", |_| {
        Behaviour::DelayThenReply(Duration::from_millis(1_500), Reply::success())
    })
    .await;
    let fast = FakeParticipant::always_succeed(&ns, "fast").await;
    let id = first
        .api()
        .submit_id(&saga(
            "held",
            vec![e2e::defs::step("s1", "slow"), e2e::defs::step("s2", "fast")],
        ))
        .await;
    slow.wait_for_count(1, SAGA_TIMEOUT).await;
    let paused = expect_json(first.api().pause(&id).await, reqwest::StatusCode::OK).await;
    assert!(paused["paused_at"].is_string(), "{paused}");

    // The reply to the command already out is recorded; s2 is not sent.
    let recorded = eventually("s1's reply recorded", SAGA_TIMEOUT, async || {
        let doc = first.api().saga(&id).await;
        (state(step(&doc, "s1")) == "succeeded").then_some(doc)
    })
    .await;
    assert_eq!(state(step(&recorded, "s2")), "pending", "{recorded}");

    first.kill();
    let second = start_process(&db, &ns).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = second.api().saga(&id).await;
    assert!(still["paused_at"].is_string(), "still paused: {still}");
    assert_eq!(state(&still), "running");
    assert_eq!(state(step(&still, "s2")), "pending", "{still}");
    assert!(fast.commands().is_empty(), "nothing sent while paused");

    let resumed = expect_json(second.api().resume(&id).await, reqwest::StatusCode::OK).await;
    assert_eq!(resumed["paused_at"], Value::Null, "{resumed}");
    second
        .api()
        .wait_for_state(&id, &["committed"], SAGA_TIMEOUT)
        .await;
    assert_eq!(fast.commands().len(), 1);
    let types: Vec<String> = second
        .api()
        .events(&id)
        .await
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect();
    let at = |t: &str| {
        types
            .iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("no {t} in {types:?}"))
    };
    assert!(
        at("paused") < at("resumed") && at("resumed") < at("committed"),
        "{types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_process_with_exit_code_0() {
    let db = new_db().await;
    let ns = TestNamespace::new();
    let mut process = start_process(&db, &ns).await;
    let _shop = FakeParticipant::always_succeed(&ns, "shop").await;
    let api = process.api();
    let one_step =
        |name: &str, participant: &str| saga(name, vec![e2e::defs::step("a", participant)]);
    let id = api.submit_id(&one_step("polite", "shop")).await;
    api.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    // A saga still waiting for its participant: its actor is alive when the signal comes, and must
    // not keep the process from finishing its writes and exiting.
    ns.register_participant("nobody-home");
    let waiting = api.submit_id(&one_step("patient", "nobody-home")).await;
    api.wait_for_state(&waiting, &["running"], SAGA_TIMEOUT)
        .await;
    let status = tokio::task::spawn_blocking(move || {
        let status = process.terminate(Duration::from_secs(30));
        (process, status)
    })
    .await
    .expect("join")
    .1
    .expect("the coordinator exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "SIGTERM exits 0: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_serve_uses_it() {
    let db = TestDb::reserve_name();
    assert!(!db.exists().expect("checking the database"));
    let url = db.url().to_string();
    for _ in 0..2 {
        let url = url.clone();
        let output = tokio::task::spawn_blocking(move || {
            run_to_completion(
                BIN,
                &["migrate"],
                &[("SAGA_DATABASE_URL", url.as_str())],
                Duration::from_secs(120),
            )
        })
        .await
        .expect("join")
        .expect("running migrate");
        assert!(
            output.status.success(),
            "migrate failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(
        db.exists().expect("checking the database"),
        "migrate created it"
    );

    let ns = TestNamespace::new();
    let process = start_process(&db, &ns).await;
    let _shop = FakeParticipant::always_succeed(&ns, "shop").await;
    let id = process
        .api()
        .submit_id(&saga("fresh", vec![e2e::defs::step("a", "shop")]))
        .await;
    process
        .api()
        .wait_for_state(&id, &["committed"], SAGA_TIMEOUT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_creates_a_missing_database() {
    let db = TestDb::reserve_name();
    let ns = TestNamespace::new();
    let process = start_process(&db, &ns).await;
    assert!(db.exists().expect("checking the database"));
    let list = process.api().list_ok(&[]).await;
    assert_eq!(list["items"], json!([]));
    eventually("/readyz 200", SAGA_TIMEOUT, async || {
        let resp = process
            .api()
            .request(reqwest::Method::GET, "/readyz")
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(())
    })
    .await;
}
