//! `inventory`: stock per SKU. `reserve` takes stock for an order, `release` gives it back.

use std::sync::Arc;

use diesel::sql_types::{BigInt, Integer, Text, Uuid as SqlUuid};
use diesel::{sql_query, PgConnection, QueryResult, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{guarded, Ctx, Faults, ShopSettings};
use participants::{Command, Outcome, ParticipantBuilder};

/// The payload of `reserve` and `release`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reserve {
    pub sku: String,
    pub qty: i64,
}

pub(super) fn install(conn: &mut PgConnection, shop: &ShopSettings) -> QueryResult<()> {
    sql_query(
        "CREATE TABLE IF NOT EXISTS inventory_stock (
            sku text PRIMARY KEY,
            initial bigint NOT NULL,
            available bigint NOT NULL CHECK (available >= 0)
        )",
    )
    .execute(conn)?;
    sql_query(
        "CREATE TABLE IF NOT EXISTS inventory_reservations (
            saga_id uuid PRIMARY KEY,
            sku text NOT NULL,
            qty bigint NOT NULL,
            released boolean NOT NULL DEFAULT false
        )",
    )
    .execute(conn)?;
    sql_query(
        "INSERT INTO inventory_stock (sku, initial, available)
         SELECT 'sku-' || i, $2, $2 FROM generate_series(0, $1 - 1) AS i
         ON CONFLICT (sku) DO NOTHING",
    )
    .bind::<Integer, _>(i32::try_from(shop.skus).unwrap_or(i32::MAX))
    .bind::<BigInt, _>(shop.stock)
    .execute(conn)?;
    Ok(())
}

pub(super) fn handlers(builder: ParticipantBuilder, ctx: Arc<Ctx>) -> ParticipantBuilder {
    let release_ctx = ctx.clone();
    builder
        .action("reserve", move |cmd: Command<Reserve>| {
            guarded(ctx.clone(), cmd, reserve)
        })
        .compensation("release", move |cmd: Command<Reserve>| {
            guarded(release_ctx.clone(), cmd, release)
        })
}

fn reserve(
    conn: &mut PgConnection,
    cmd: &Command<Reserve>,
    faults: &Faults,
) -> QueryResult<Outcome> {
    let Reserve { sku, qty } = &cmd.payload;
    if *qty <= 0 {
        return Ok(Outcome::failure(format!("invalid quantity {qty}")));
    }
    if faults.refuse() {
        return Ok(Outcome::failure(format!(
            "injected refusal: {sku} is blocked"
        )));
    }
    let taken = sql_query(
        "UPDATE inventory_stock SET available = available - $2 WHERE sku = $1 AND available >= $2",
    )
    .bind::<Text, _>(sku)
    .bind::<BigInt, _>(qty)
    .execute(conn)?;
    if taken == 0 {
        return Ok(Outcome::failure(format!(
            "{sku}: not enough stock for {qty}"
        )));
    }
    sql_query("INSERT INTO inventory_reservations (saga_id, sku, qty) VALUES ($1, $2, $3)")
        .bind::<SqlUuid, _>(cmd.saga_id)
        .bind::<Text, _>(sku)
        .bind::<BigInt, _>(qty)
        .execute(conn)?;
    Ok(Outcome::success_with(
        json!({"reservation": cmd.saga_id, "sku": sku, "qty": qty}),
    ))
}

#[derive(QueryableByName)]
struct Released {
    #[diesel(sql_type = Text)]
    sku: String,
    #[diesel(sql_type = BigInt)]
    qty: i64,
}

fn release(conn: &mut PgConnection, cmd: &Command<Reserve>, _: &Faults) -> QueryResult<Outcome> {
    let released: Vec<Released> = sql_query(
        "UPDATE inventory_reservations SET released = true
         WHERE saga_id = $1 AND NOT released RETURNING sku, qty",
    )
    .bind::<SqlUuid, _>(cmd.saga_id)
    .load(conn)?;
    for r in &released {
        sql_query("UPDATE inventory_stock SET available = available + $2 WHERE sku = $1")
            .bind::<Text, _>(&r.sku)
            .bind::<BigInt, _>(r.qty)
            .execute(conn)?;
    }
    Ok(Outcome::success())
}
