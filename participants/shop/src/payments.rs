//! `payments`: balances per account. `charge` moves money from a customer to the merchant,
//! `refund` moves it back.

use std::sync::Arc;

use diesel::sql_types::{BigInt, Integer, Text, Uuid as SqlUuid};
use diesel::{sql_query, PgConnection, QueryResult, QueryableByName, RunQueryDsl};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{guarded, Ctx, Faults, ShopSettings};
use participants::{Command, Outcome, ParticipantBuilder};

/// The account that receives every charge.
pub const MERCHANT: &str = "merchant";

/// The payload of `charge` and `refund`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub account: String,
    pub amount_cents: i64,
}

pub(super) fn install(conn: &mut PgConnection, shop: &ShopSettings) -> QueryResult<()> {
    sql_query(
        "CREATE TABLE IF NOT EXISTS payments_accounts (
            account text PRIMARY KEY,
            initial bigint NOT NULL,
            balance bigint NOT NULL CHECK (account = 'merchant' OR balance >= 0)
        )",
    )
    .execute(conn)?;
    sql_query(
        "CREATE TABLE IF NOT EXISTS payments_charges (
            saga_id uuid PRIMARY KEY,
            account text NOT NULL,
            amount_cents bigint NOT NULL,
            refunded boolean NOT NULL DEFAULT false
        )",
    )
    .execute(conn)?;
    sql_query(
        "INSERT INTO payments_accounts (account, initial, balance)
         SELECT 'acct-' || i, $2, $2 FROM generate_series(0, $1 - 1) AS i
         UNION ALL SELECT 'merchant', 0, 0
         ON CONFLICT (account) DO NOTHING",
    )
    .bind::<Integer, _>(i32::try_from(shop.accounts).unwrap_or(i32::MAX))
    .bind::<BigInt, _>(shop.balance_cents)
    .execute(conn)?;
    Ok(())
}

pub(super) fn handlers(builder: ParticipantBuilder, ctx: Arc<Ctx>) -> ParticipantBuilder {
    let refund_ctx = ctx.clone();
    builder
        .action("charge", move |cmd: Command<Charge>| {
            guarded(ctx.clone(), cmd, charge)
        })
        .compensation("refund", move |cmd: Command<Charge>| {
            guarded(refund_ctx.clone(), cmd, refund)
        })
}

fn charge(conn: &mut PgConnection, cmd: &Command<Charge>, faults: &Faults) -> QueryResult<Outcome> {
    let Charge {
        account,
        amount_cents,
    } = &cmd.payload;
    if *amount_cents <= 0 || account == MERCHANT {
        return Ok(Outcome::failure("invalid charge"));
    }
    if faults.refuse() {
        return Ok(Outcome::failure(format!(
            "injected refusal: card of {account} declined"
        )));
    }
    let taken = sql_query(
        "UPDATE payments_accounts SET balance = balance - $2 WHERE account = $1 AND balance >= $2",
    )
    .bind::<Text, _>(account)
    .bind::<BigInt, _>(amount_cents)
    .execute(conn)?;
    if taken == 0 {
        return Ok(Outcome::failure(format!("{account}: insufficient funds")));
    }
    move_to_merchant(conn, *amount_cents)?;
    sql_query("INSERT INTO payments_charges (saga_id, account, amount_cents) VALUES ($1, $2, $3)")
        .bind::<SqlUuid, _>(cmd.saga_id)
        .bind::<Text, _>(account)
        .bind::<BigInt, _>(amount_cents)
        .execute(conn)?;
    Ok(Outcome::success_with(
        json!({"payment": format!("pay-{}", cmd.saga_id), "amount_cents": amount_cents}),
    ))
}

fn move_to_merchant(conn: &mut PgConnection, amount: i64) -> QueryResult<()> {
    sql_query("UPDATE payments_accounts SET balance = balance + $1 WHERE account = 'merchant'")
        .bind::<BigInt, _>(amount)
        .execute(conn)
        .map(|_| ())
}

#[derive(QueryableByName)]
struct Refunded {
    #[diesel(sql_type = Text)]
    account: String,
    #[diesel(sql_type = BigInt)]
    amount_cents: i64,
}

fn refund(conn: &mut PgConnection, cmd: &Command<Charge>, _: &Faults) -> QueryResult<Outcome> {
    let refunded: Vec<Refunded> = sql_query(
        "UPDATE payments_charges SET refunded = true
         WHERE saga_id = $1 AND NOT refunded RETURNING account, amount_cents",
    )
    .bind::<SqlUuid, _>(cmd.saga_id)
    .load(conn)?;
    for r in &refunded {
        sql_query("UPDATE payments_accounts SET balance = balance + $2 WHERE account = $1")
            .bind::<Text, _>(&r.account)
            .bind::<BigInt, _>(r.amount_cents)
            .execute(conn)?;
        move_to_merchant(conn, -r.amount_cents)?;
    }
    Ok(Outcome::success())
}
