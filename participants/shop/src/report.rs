//! The consistency report: stock and money conserved, every order has exactly one saga and every
//! saga an order, every order's effects match its saga.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use anyhow::Context;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use uuid::Uuid;

use crate::orders::{self, OrderSaga};
use crate::{Service, ShopSettings};
use participants::client::SagaState;

/// What the report found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub stock_initial: i64,
    pub stock_available: i64,
    pub stock_reserved: i64,
    pub money_initial: i64,
    pub money_total: i64,
    pub merchant_balance: i64,
    pub money_charged: i64,
    /// Rows in the order service's `orders` table.
    pub orders: usize,
    /// Orders whose outbox row was sent and carries a saga id.
    pub orders_with_saga: usize,
    /// How many of the sagas checked ended in each state.
    pub sagas: BTreeMap<String, usize>,
    /// Commands the services' barriers recognised as already handled (retries, redeliveries).
    pub duplicates_absorbed: i64,
    /// Every broken invariant; empty when the shop is consistent.
    pub violations: Vec<String>,
}

impl Report {
    pub fn is_consistent(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "consistency report")?;
        writeln!(
            f,
            "  orders: {} placed, {} with their saga",
            self.orders, self.orders_with_saga
        )?;
        writeln!(
            f,
            "  sagas:  {}",
            self.sagas
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(
            f,
            "  stock:  available {} + reserved {} = {} (initial {})",
            self.stock_available,
            self.stock_reserved,
            self.stock_available + self.stock_reserved,
            self.stock_initial
        )?;
        writeln!(
            f,
            "  money:  all balances {} (initial {}); merchant {} = charges in effect {}",
            self.money_total, self.money_initial, self.merchant_balance, self.money_charged
        )?;
        writeln!(
            f,
            "  duplicates absorbed by the barrier: {}",
            self.duplicates_absorbed
        )?;
        if self.violations.is_empty() {
            writeln!(
                f,
                "  OK: stock and money conserved, one saga per order, every order consistent"
            )
        } else {
            writeln!(f, "  {} VIOLATIONS:", self.violations.len())?;
            for v in &self.violations {
                writeln!(f, "    - {v}")?;
            }
            Ok(())
        }
    }
}

#[derive(QueryableByName)]
struct Sums {
    #[diesel(sql_type = BigInt)]
    a: i64,
    #[diesel(sql_type = BigInt)]
    b: i64,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = SqlUuid)]
    saga_id: Uuid,
}

fn sums(conn: &mut PgConnection, sql: &str) -> anyhow::Result<(i64, i64)> {
    let s: Sums = sql_query(sql).get_result(conn).context(sql.to_string())?;
    Ok((s.a, s.b))
}

fn names(conn: &mut PgConnection, sql: &str) -> anyhow::Result<Vec<String>> {
    let rows: Vec<Name> = sql_query(sql).load(conn).context(sql.to_string())?;
    Ok(rows.into_iter().map(|r| r.name).collect())
}

fn ids(conn: &mut PgConnection, sql: &str) -> anyhow::Result<HashSet<Uuid>> {
    let rows: Vec<Id> = sql_query(sql).load(conn).context(sql.to_string())?;
    Ok(rows.into_iter().map(|r| r.saga_id).collect())
}

/// Checks the shop's databases. `sagas`: the orders' sagas to check one by one, with their final
/// states; with `complete`, they are all the sagas there are, so an order whose saga is not among
/// them is a violation. Every order must have exactly one saga, and every saga (checked or with an
/// effect in a participant) an order.
pub fn check(
    shop: &ShopSettings,
    sagas: &[(Uuid, SagaState)],
    complete: bool,
) -> anyhow::Result<Report> {
    let connect = |service| {
        let url = shop.database_url(service);
        PgConnection::establish(&url).with_context(|| format!("connecting to {url}"))
    };
    let mut report = Report::default();
    let v = &mut report.violations;

    for service in Service::ALL {
        let (absorbed, _) = sums(
            &mut connect(service)?,
            "SELECT coalesce(sum(absorbed), 0)::bigint AS a, 0::bigint AS b FROM shop_duplicates",
        )?;
        report.duplicates_absorbed += absorbed;
    }
    let mut inv = connect(Service::Inventory)?;
    (report.stock_initial, report.stock_available) = sums(
        &mut inv,
        "SELECT coalesce(sum(initial), 0)::bigint AS a, coalesce(sum(available), 0)::bigint AS b FROM inventory_stock",
    )?;
    (report.stock_reserved, _) = sums(
        &mut inv,
        "SELECT coalesce(sum(qty), 0)::bigint AS a, 0::bigint AS b FROM inventory_reservations WHERE NOT released",
    )?;
    for sku in names(
        &mut inv,
        "SELECT s.sku AS name FROM inventory_stock s
         LEFT JOIN (SELECT sku, sum(qty) AS q FROM inventory_reservations WHERE NOT released GROUP BY sku) r
         USING (sku) WHERE s.available + coalesce(r.q, 0) <> s.initial",
    )? {
        v.push(format!("{sku}: available + reserved differs from the initial stock"));
    }
    let reserved = ids(
        &mut inv,
        "SELECT saga_id FROM inventory_reservations WHERE NOT released",
    )?;

    let mut pay = connect(Service::Payments)?;
    (report.money_initial, report.money_total) = sums(
        &mut pay,
        "SELECT coalesce(sum(initial), 0)::bigint AS a, coalesce(sum(balance), 0)::bigint AS b FROM payments_accounts",
    )?;
    (report.merchant_balance, report.money_charged) = sums(
        &mut pay,
        "SELECT (SELECT balance FROM payments_accounts WHERE account = 'merchant') AS a,
                (SELECT coalesce(sum(amount_cents), 0)::bigint FROM payments_charges WHERE NOT refunded) AS b",
    )?;
    if report.money_total != report.money_initial {
        v.push(format!(
            "money is not conserved: {} in accounts, {} initially",
            report.money_total, report.money_initial
        ));
    }
    if report.merchant_balance != report.money_charged {
        v.push(format!(
            "the merchant holds {} but the charges in effect are {}",
            report.merchant_balance, report.money_charged
        ));
    }
    for account in names(
        &mut pay,
        "SELECT a.account AS name FROM payments_accounts a
         LEFT JOIN (SELECT account, sum(amount_cents) AS c FROM payments_charges WHERE NOT refunded GROUP BY account) c
         USING (account) WHERE a.account <> 'merchant' AND a.balance + coalesce(c.c, 0) <> a.initial",
    )? {
        v.push(format!("{account}: balance + charges in effect differs from the initial balance"));
    }
    let charged = ids(
        &mut pay,
        "SELECT saga_id FROM payments_charges WHERE NOT refunded",
    )?;

    let mut ship = connect(Service::Shipping)?;
    let shipped = ids(
        &mut ship,
        "SELECT saga_id FROM shipping_shipments WHERE NOT cancelled",
    )?;

    let ordered = check_orders(shop, &mut report)?;
    let v = &mut report.violations;
    for id in reserved.iter().chain(&charged).chain(&shipped) {
        if !ordered.contains(id) {
            v.push(format!(
                "an effect of saga {id} is in effect, but no order has that saga"
            ));
        }
    }

    let effects = |id: &Uuid| {
        [
            ("reservation", reserved.contains(id)),
            ("charge", charged.contains(id)),
            ("shipment", shipped.contains(id)),
        ]
    };
    for (id, state) in sagas {
        let label = serde_json::to_value(state)
            .ok()
            .and_then(|s| s.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{state:?}"));
        *report.sagas.entry(label.clone()).or_default() += 1;
        if !ordered.contains(id) {
            v.push(format!("saga {id} belongs to no order"));
        }
        let expect = match state {
            SagaState::Committed => true,
            SagaState::Compensated | SagaState::Aborted => false,
            _ => {
                v.push(format!("saga {id} is {label}, not final"));
                continue;
            }
        };
        for (what, in_effect) in effects(id) {
            if in_effect != expect {
                let has = if in_effect { "has" } else { "lacks" };
                v.push(format!("{label} saga {id} {has} a {what} in effect"));
            }
        }
    }
    if complete {
        let known: HashSet<Uuid> = sagas.iter().map(|(id, _)| *id).collect();
        for id in reserved.iter().chain(&charged).chain(&shipped) {
            if !known.contains(id) {
                v.push(format!("an effect of unknown saga {id} is in effect"));
            }
        }
        for id in &ordered {
            if !known.contains(id) {
                v.push(format!("the saga {id} of an order was not checked"));
            }
        }
    }
    Ok(report)
}

/// Every order has exactly one saga (its outbox row sent, with a saga id no other order has), and
/// every outbox row an order. Returns the orders' saga ids.
fn check_orders(shop: &ShopSettings, report: &mut Report) -> anyhow::Result<HashSet<Uuid>> {
    let mut ordered = HashSet::new();
    if !crate::database_exists(&shop.database_server, &shop.orders_database_name())? {
        // No order was ever placed: any saga found elsewhere is one without an order.
        return Ok(ordered);
    }
    let url = shop.orders_database_url();
    let mut conn = PgConnection::establish(&url).with_context(|| format!("connecting to {url}"))?;
    let all: Vec<OrderSaga> = orders::order_sagas(&mut conn).context("reading the orders")?;
    let orphans = orders::orphan_outbox_rows(&mut conn).context("reading the outbox")?;
    let v = &mut report.violations;
    report.orders = all.len();
    for order in &all {
        match (order.outbox_id, order.saga_id) {
            (None, _) => v.push(format!("order {} has no outbox row", order.order_id)),
            (Some(_), Some(saga)) if order.sent => {
                report.orders_with_saga += 1;
                if !ordered.insert(saga) {
                    v.push(format!("saga {saga} belongs to more than one order"));
                }
            }
            (Some(row), _) => v.push(format!(
                "order {} has no saga: outbox row {row} is {} ({})",
                order.order_id,
                if order.refused { "refused" } else { "pending" },
                order.last_error.as_deref().unwrap_or("no error")
            )),
        }
    }
    for row in orphans {
        v.push(format!(
            "outbox row {} (saga {:?}) belongs to no order",
            row.id, row.saga_id
        ));
    }
    Ok(ordered)
}
