//! A saga initiator using the SDK's half-message style that dies at a chosen point, for the crash
//! tests in `tests/initiator.rs`.
//!
//! `initiator-under-test <point> <coordinator url> <database url> <check-back>`: prepares a
//! two-step saga at participant `shop`, prints its id on stdout, and dies (`abort`) at `point`:
//! - `after-local-commit`: the local transaction (marker + an `orders` row) committed, the saga was
//!   neither committed nor aborted;
//! - `in-local-transaction`: the local transaction is open with its rows written, not committed.
//!
//! `<check-back>` is a URL, or `participant:{name}` for a `check` command to that participant.

use diesel::prelude::*;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use participants::client::{CheckBack, Client, SagaRequest, StepRequest};
use participants::initiator::half_message::{self, HalfMessageError};
use std::io::Write;

fn order_saga() -> SagaRequest {
    SagaRequest::new("place-order")
        .payload(serde_json::json!({"item": "book"}))
        .step(StepRequest::new("reserve", "shop", "do-reserve").compensation("undo-reserve"))
        .step(StepRequest::new("charge", "shop", "do-charge").compensation("undo-charge"))
}

fn insert_order(conn: &mut PgConnection, saga_id: uuid::Uuid) -> QueryResult<usize> {
    diesel::sql_query("INSERT INTO orders (saga_id, item) VALUES ($1, $2)")
        .bind::<SqlUuid, _>(saga_id)
        .bind::<Text, _>("book")
        .execute(conn)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, point, coordinator, database, check] = args.as_slice() else {
        anyhow::bail!(
            "usage: initiator-under-test <point> <coordinator url> <database url> <check-back>"
        );
    };
    let check_back = match check.strip_prefix("participant:") {
        Some(name) => CheckBack::Participant {
            participant: name.to_string(),
        },
        None => CheckBack::Url { url: check.clone() },
    };
    let client = Client::new(coordinator)?;
    let mut request = order_saga();
    request.prepare_timeout_ms = Some(300);
    let saga = half_message::prepare(&client, request, check_back).await?;
    println!("{}", saga.id);
    std::io::stdout().flush()?;
    let mut conn = PgConnection::establish(database)?;
    let point = point.clone();
    let result: Result<usize, HalfMessageError<diesel::result::Error>> =
        half_message::run_local(&mut conn, saga.id, |conn| {
            let n = insert_order(conn, saga.id)?;
            if point == "in-local-transaction" {
                // Dies with the transaction open: Postgres rolls it back when the connection drops.
                std::process::abort();
            }
            Ok(n)
        });
    result?;
    if point == "after-local-commit" {
        std::process::abort();
    }
    anyhow::bail!("unknown point {point}")
}
