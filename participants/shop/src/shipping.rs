//! `shipping`: `book` a shipment for an order, `cancel` it.

use std::sync::Arc;

use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel::{sql_query, PgConnection, QueryResult, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{guarded, Ctx, Faults};
use participants::{Command, Outcome, ParticipantBuilder};

/// The payload of `book` and `cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ship {
    pub address: String,
}

pub(super) fn install(conn: &mut PgConnection) -> QueryResult<()> {
    sql_query(
        "CREATE TABLE IF NOT EXISTS shipping_shipments (
            saga_id uuid PRIMARY KEY,
            address text NOT NULL,
            cancelled boolean NOT NULL DEFAULT false
        )",
    )
    .execute(conn)?;
    Ok(())
}

pub(super) fn handlers(builder: ParticipantBuilder, ctx: Arc<Ctx>) -> ParticipantBuilder {
    let cancel_ctx = ctx.clone();
    builder
        .action("book", move |cmd: Command<Ship>| {
            guarded(ctx.clone(), cmd, book)
        })
        .compensation("cancel", move |cmd: Command<Ship>| {
            guarded(cancel_ctx.clone(), cmd, cancel)
        })
}

fn book(conn: &mut PgConnection, cmd: &Command<Ship>, faults: &Faults) -> QueryResult<Outcome> {
    if faults.refuse() {
        return Ok(Outcome::failure(format!(
            "injected refusal: {} is not deliverable",
            cmd.payload.address
        )));
    }
    sql_query("INSERT INTO shipping_shipments (saga_id, address) VALUES ($1, $2)")
        .bind::<SqlUuid, _>(cmd.saga_id)
        .bind::<Text, _>(&cmd.payload.address)
        .execute(conn)?;
    Ok(Outcome::success_with(
        json!({"tracking": format!("trk-{}", cmd.saga_id)}),
    ))
}

fn cancel(conn: &mut PgConnection, cmd: &Command<Ship>, _: &Faults) -> QueryResult<Outcome> {
    sql_query("UPDATE shipping_shipments SET cancelled = true WHERE saga_id = $1")
        .bind::<SqlUuid, _>(cmd.saga_id)
        .execute(conn)?;
    Ok(Outcome::success())
}
