//! `scripts/services.sh`, which installs and starts Postgres and RabbitMQ for CI (`.ci/run`) and for a
//! first run on a bare machine (`scripts/up.sh`): with both services answering, `ensure` must see
//! it, change nothing (no install, no start, no pg_hba.conf edit, no sudo) and return at once; and
//! both callers must use the script, not carry a copy of it.
//!
//! The script knows only the default addresses, so with `E2E_PG_URL` or `E2E_AMQP_URL` set the
//! first test has nothing to check and says so.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn services(arg: &str) -> Output {
    Command::new("bash")
        .arg(repo().join("scripts/services.sh"))
        .arg(arg)
        .output()
        .expect("run scripts/services.sh")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn ensure_changes_nothing_when_both_services_answer() {
    if std::env::var_os("E2E_PG_URL").is_some() || std::env::var_os("E2E_AMQP_URL").is_some() {
        eprintln!("E2E_PG_URL or E2E_AMQP_URL is set: scripts/services.sh only knows 127.0.0.1:5432 and :5672");
        return;
    }
    let status = services("status");
    assert!(
        status.status.success(),
        "the services must answer for the e2e tests: {}",
        text(&status)
    );

    // One line and nothing else: it saw both answer and did nothing (no install, no start, no
    // waiting, no edit), whatever the machine's speed.
    let out = services("ensure");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["services: Postgres answers on 127.0.0.1:5432 (user postgres, trust auth), RabbitMQ on 127.0.0.1:5672"],
        "ensure did more than see both answer: {}",
        text(&out)
    );
    assert!(out.stderr.is_empty(), "{}", text(&out));
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let out = services("bogus");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("usage:"),
        "{}",
        text(&out)
    );
}

#[test]
fn ci_and_up_use_the_script_not_a_copy() {
    for file in [".ci/run", "scripts/up.sh"] {
        let source = std::fs::read_to_string(repo().join(file)).expect(file);
        assert!(
            source.lines().any(|l| l.trim() == ". scripts/services.sh"),
            "{file} does not source scripts/services.sh"
        );
        assert!(
            source.lines().any(|l| l.trim() == "services_ensure"),
            "{file} does not call services_ensure"
        );
        for copied in [
            "pg_ctlcluster",
            "pg_hba",
            "pg_isready",
            "rabbitmq-server -detached",
            "await_startup",
        ] {
            assert!(
                !source.lines().any(|l| !l.trim_start().starts_with('#') && l.contains(copied)),
                "{file} names `{copied}` outside a comment: the service code belongs in scripts/services.sh"
            );
        }
    }
}
