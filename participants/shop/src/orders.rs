//! `orders`: the shop's order service, the initiator of `place-order` sagas.
//!
//! It starts sagas through the SDK's transactional outbox ([`participants::initiator::outbox`]): placing an
//! order is one local transaction that inserts the order row and enqueues its saga, so an order
//! never exists without its saga request and a saga request never without its order. An
//! [`OutboxRelay`] in the same process submits the enqueued requests; while the coordinator is
//! unreachable, orders are still taken and their sagas start when it is back.
//!
//! The saga's idempotency key is `order-{order id}` (a UUID chosen when the row is inserted): it is
//! stable across relay restarts, so a request submitted twice gives one saga, and it does not
//! collide with the sagas of another shop using the same coordinator.

use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{sql_query, Connection, PgConnection, QueryResult, QueryableByName, RunQueryDsl};
use uuid::Uuid;

use crate::order::{Order, OrderPolicy};
use crate::ShopSettings;
use participants::client::Client;
use participants::initiator::outbox::{self, OutboxRelay, RelayHandle, RelaySettings};

/// The relay's name (its advisory lock and the fallback key prefix).
pub const RELAY_NAME: &str = "shop-orders";

/// The idempotency key of an order's saga.
pub fn saga_key(order_id: Uuid) -> String {
    format!("order-{order_id}")
}

/// Creates the orders database if missing, the SDK's outbox table and the `orders` table.
pub fn install(shop: &ShopSettings) -> anyhow::Result<()> {
    crate::create_database(&shop.database_server, &shop.orders_database_name())?;
    let url = shop.orders_database_url();
    let mut conn = PgConnection::establish(&url).with_context(|| format!("connecting to {url}"))?;
    participants::initiator::install(&mut conn)?;
    sql_query(
        "CREATE TABLE IF NOT EXISTS orders (
            id uuid PRIMARY KEY,
            sku text NOT NULL,
            qty bigint NOT NULL,
            account text NOT NULL,
            amount_cents bigint NOT NULL,
            address text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            -- The outbox row enqueued with the order, in the same transaction.
            outbox_id bigint NOT NULL UNIQUE
        )",
    )
    .execute(&mut conn)?;
    Ok(())
}

/// A relay for the orders database's outbox, submitting to `client`'s coordinator. Run it with
/// [`OutboxRelay::run_until`]; wake it through [`OutboxRelay::handle`] after placing orders.
pub fn relay(shop: &ShopSettings, client: Client, settings: Option<RelaySettings>) -> OutboxRelay {
    let settings = settings.unwrap_or_else(|| RelaySettings::new(RELAY_NAME));
    OutboxRelay::new(client, shop.orders_database_url(), settings)
}

/// An order as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub id: Uuid,
    pub outbox_id: i64,
}

/// Places `order` on `conn`: in one transaction, the order row and its saga request in the outbox.
/// Wake the relay afterwards (see [`place_and_wake`]).
pub fn place(conn: &mut PgConnection, order: &Order, policy: &OrderPolicy) -> QueryResult<Placed> {
    let id = Uuid::new_v4();
    let request = order.saga(policy).key(saga_key(id));
    conn.transaction(|conn| {
        let outbox_id = outbox::enqueue(conn, &request)?;
        sql_query(
            "INSERT INTO orders (id, sku, qty, account, amount_cents, address, outbox_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(&order.reserve.sku)
        .bind::<BigInt, _>(order.reserve.qty)
        .bind::<Text, _>(&order.charge.account)
        .bind::<BigInt, _>(order.charge.amount_cents)
        .bind::<Text, _>(&order.ship.address)
        .bind::<BigInt, _>(outbox_id)
        .execute(conn)?;
        Ok(Placed { id, outbox_id })
    })
}

/// [`place`], then wakes the relay once the transaction committed.
pub fn place_and_wake(
    conn: &mut PgConnection,
    order: &Order,
    policy: &OrderPolicy,
    relay: &RelayHandle,
) -> QueryResult<Placed> {
    let placed = place(conn, order, policy)?;
    relay.wake();
    Ok(placed)
}

/// Where an order's saga stands, as the orders database knows it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct OrderSaga {
    #[diesel(sql_type = SqlUuid)]
    pub order_id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    /// The order's outbox row, if it still exists.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub outbox_id: Option<i64>,
    /// Set once the coordinator accepted the saga.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub saga_id: Option<Uuid>,
    #[diesel(sql_type = Bool)]
    pub sent: bool,
    #[diesel(sql_type = Bool)]
    pub refused: bool,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
}

const ORDER_SAGAS: &str = "SELECT o.id AS order_id, o.created_at, x.id AS outbox_id, x.saga_id,
        coalesce(x.sent_at IS NOT NULL, false) AS sent,
        coalesce(x.refused_at IS NOT NULL, false) AS refused, x.last_error
     FROM orders o LEFT JOIN saga_outbox x ON x.id = o.outbox_id";

/// The saga of one order.
pub fn order_saga(conn: &mut PgConnection, order_id: Uuid) -> QueryResult<OrderSaga> {
    sql_query(format!("{ORDER_SAGAS} WHERE o.id = $1"))
        .bind::<SqlUuid, _>(order_id)
        .get_result(conn)
}

/// Every order with its saga, oldest first.
pub fn order_sagas(conn: &mut PgConnection) -> QueryResult<Vec<OrderSaga>> {
    sql_query(format!("{ORDER_SAGAS} ORDER BY o.created_at, o.id")).load(conn)
}

/// Outbox rows that belong to no order (none should exist: both are written together).
pub fn orphan_outbox_rows(conn: &mut PgConnection) -> QueryResult<Vec<outbox::OutboxRow>> {
    let orders: Vec<OrderSaga> = order_sagas(conn)?;
    let owned: std::collections::HashSet<i64> = orders.iter().filter_map(|o| o.outbox_id).collect();
    Ok(outbox::rows(conn)?
        .into_iter()
        .filter(|row| !owned.contains(&row.id))
        .collect())
}

/// Waits until the relay delivered the order's saga request and returns the saga's id. Fails if the
/// coordinator refused the saga for good, or after `timeout`.
pub async fn wait_for_saga(
    pool: &crate::DbPool,
    order_id: Uuid,
    timeout: std::time::Duration,
) -> anyhow::Result<Uuid> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pool = pool.clone();
        let found = tokio::task::spawn_blocking(move || -> anyhow::Result<OrderSaga> {
            let mut conn = pool.get()?;
            Ok(order_saga(&mut conn, order_id)?)
        })
        .await??;
        if let Some(saga_id) = found.saga_id {
            return Ok(saga_id);
        }
        anyhow::ensure!(
            !found.refused,
            "order {order_id}: the coordinator refused its saga: {}",
            found.last_error.unwrap_or_default()
        );
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "order {order_id}: its saga was not submitted within {timeout:?} (last error: {})",
                found.last_error.as_deref().unwrap_or("none")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
