//! An example shop built on the participants SDK: three participants, each with its own database, all behind the barrier.
//!
//! - `inventory` (stock per SKU): `reserve` / `release`.
//! - `payments` (balances per account): `charge` / `refund`, moving money to and from the merchant.
//! - `shipping`: `book` / `cancel`.
//!
//! The `orders` service ([`orders`], its own database too) takes orders and starts their
//! `place-order` sagas through the SDK's transactional outbox. The saga ([`order`]) runs the three
//! participants in that order. [`Faults`] injects business failures,
//! transient errors, slow replies, duplicate deliveries and crashes between the barrier's commit and
//! the reply. [`report`] checks afterwards that stock and money are conserved and that every order's
//! effects match its saga's final state.

pub mod cli;
pub mod demo;
mod faults;
pub mod inventory;
pub mod order;
pub mod orders;
pub mod payments;
pub mod report;
pub mod shipping;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::{sql_query, Connection, PgConnection, RunQueryDsl};

pub use faults::Faults;

use participants::barrier::{Barrier, Verdict};
use participants::{
    command_log, BoxError, Command, Outcome, Participant, ParticipantHandle, Settings,
};

/// A pool of connections to one service's database.
pub type DbPool = Pool<ConnectionManager<PgConnection>>;

/// The three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Service {
    Inventory,
    Payments,
    Shipping,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Inventory, Service::Payments, Service::Shipping];

    /// The participant name (and database suffix).
    pub fn name(self) -> &'static str {
        match self {
            Service::Inventory => "inventory",
            Service::Payments => "payments",
            Service::Shipping => "shipping",
        }
    }
}

/// Where the shop keeps its data and how big it is.
#[derive(Debug, Clone, clap::Args)]
pub struct ShopSettings {
    /// Postgres server, as a URL without a database name.
    #[arg(
        long,
        env = "SHOP_DATABASE_SERVER",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub database_server: String,
    /// Each service's database is `{prefix}_{service}` (the order service's `{prefix}_orders`),
    /// created if missing.
    #[arg(long, env = "SHOP_DATABASE_PREFIX", default_value = "shop")]
    pub database_prefix: String,
    /// SKUs `sku-0` .. `sku-{n-1}`.
    #[arg(long, env = "SHOP_SKUS", default_value_t = 10)]
    pub skus: u32,
    /// Initial stock of every SKU.
    #[arg(long, env = "SHOP_STOCK", default_value_t = 100)]
    pub stock: i64,
    /// Customer accounts `acct-0` .. `acct-{n-1}`.
    #[arg(long, env = "SHOP_ACCOUNTS", default_value_t = 10)]
    pub accounts: u32,
    /// Initial balance of every customer account, in cents.
    #[arg(long, env = "SHOP_BALANCE_CENTS", default_value_t = 100_000)]
    pub balance_cents: i64,
}

impl Default for ShopSettings {
    fn default() -> Self {
        ShopSettings {
            database_server: "postgres://postgres@127.0.0.1:5432".into(),
            database_prefix: "shop".into(),
            skus: 10,
            stock: 100,
            accounts: 10,
            balance_cents: 100_000,
        }
    }
}

impl ShopSettings {
    /// The database of one service.
    pub fn database_name(&self, service: Service) -> String {
        format!("{}_{}", self.database_prefix, service.name())
    }

    pub fn database_url(&self, service: Service) -> String {
        format!(
            "{}/{}",
            self.database_server.trim_end_matches('/'),
            self.database_name(service)
        )
    }

    /// The order service's database.
    pub fn orders_database_name(&self) -> String {
        format!("{}_orders", self.database_prefix)
    }

    pub fn orders_database_url(&self) -> String {
        format!(
            "{}/{}",
            self.database_server.trim_end_matches('/'),
            self.orders_database_name()
        )
    }

    /// Creates the service's database if missing, then its tables (seeded once) and the barrier.
    pub fn install(&self, service: Service) -> anyhow::Result<()> {
        create_database(&self.database_server, &self.database_name(service))?;
        let url = self.database_url(service);
        let mut conn =
            PgConnection::establish(&url).with_context(|| format!("connecting to {url}"))?;
        participants::barrier::install(&mut conn)?;
        install_duplicates(&mut conn)?;
        match service {
            Service::Inventory => inventory::install(&mut conn, self)?,
            Service::Payments => payments::install(&mut conn, self)?,
            Service::Shipping => shipping::install(&mut conn)?,
        }
        Ok(())
    }

    /// A small pool to one service's database.
    pub fn pool(&self, service: Service, size: u32) -> anyhow::Result<DbPool> {
        pool(self.database_url(service), size)
    }

    /// A small pool to the order service's database.
    pub fn orders_pool(&self, size: u32) -> anyhow::Result<DbPool> {
        pool(self.orders_database_url(), size)
    }
}

fn pool(url: String, size: u32) -> anyhow::Result<DbPool> {
    Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        .build(ConnectionManager::new(url.clone()))
        .with_context(|| format!("connecting to {url}"))
}

/// A connection to `server`'s `postgres` database, for creating others.
fn admin(server: &str) -> anyhow::Result<PgConnection> {
    let admin_url = format!("{}/postgres", server.trim_end_matches('/'));
    PgConnection::establish(&admin_url).with_context(|| format!("connecting to {admin_url}"))
}

/// Whether the database `name` exists on `server`.
pub(crate) fn database_exists(server: &str, name: &str) -> anyhow::Result<bool> {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let found: Found =
        sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS found")
            .bind::<diesel::sql_types::Text, _>(name)
            .get_result(&mut admin(server)?)?;
    Ok(found.found)
}

pub(crate) fn create_database(server: &str, name: &str) -> anyhow::Result<()> {
    if !database_exists(server, name)? {
        // Two processes may race here; the loser's error is harmless if the database now exists.
        if let Err(e) =
            sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut admin(server)?)
        {
            anyhow::ensure!(
                database_exists(server, name)?,
                "creating database {name}: {e}"
            );
        }
    }
    Ok(())
}

/// What every handler of one service shares.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub service: Service,
    pub pool: DbPool,
    pub faults: Faults,
}

/// Business code of one command, run inside the barrier's transaction.
pub(crate) type Business<P> =
    fn(&mut PgConnection, &Command<P>, &Faults) -> diesel::QueryResult<Outcome>;

/// Every shop handler: injected delays and transient errors first, then the business code behind
/// the barrier, then (maybe) an injected crash after the commit and before the reply.
pub(crate) async fn guarded<P: Clone + Send + 'static>(
    ctx: Arc<Ctx>,
    command: Command<P>,
    business: Business<P>,
) -> Result<Outcome, BoxError> {
    if let Some(delay) = ctx.faults.slow() {
        tokio::time::sleep(delay).await;
    }
    if ctx.faults.transient() {
        return Ok(Outcome::retry("injected transient error"));
    }
    let key = command.idempotency_key.clone();
    let worker = ctx.clone();
    let guarded = tokio::task::spawn_blocking(move || -> Result<_, BoxError> {
        let mut conn = worker.pool.get()?;
        let guarded = Barrier::new(&command)
            .run(&mut conn, |conn| business(conn, &command, &worker.faults))?;
        if guarded.verdict == Verdict::Duplicate {
            sql_query("UPDATE shop_duplicates SET absorbed = absorbed + 1").execute(&mut conn)?;
        }
        // Handed back for the log lines below, which carry its saga's fields.
        Ok((guarded, command))
    })
    .await??;
    let (guarded, command) = guarded;
    if guarded.verdict != Verdict::Ran || guarded.outcome.is_success() {
        command_log!(
            log::Level::Debug,
            command;
            "{}: {key}: {:?} {}",
            ctx.service.name(),
            guarded.verdict,
            guarded.outcome.label()
        );
    }
    if guarded.verdict == Verdict::Ran && ctx.faults.crash() {
        command_log!(
            log::Level::Warn,
            command;
            "{}: injected crash after committing {key}, before replying",
            ctx.service.name()
        );
        std::process::abort();
    }
    Ok(guarded.outcome)
}

/// The one-row count of commands the barrier recognised as already handled (a retry, a
/// redelivery): the duplicates this service absorbed, for the consistency report.
fn install_duplicates(conn: &mut PgConnection) -> diesel::QueryResult<()> {
    sql_query("CREATE TABLE IF NOT EXISTS shop_duplicates (absorbed bigint NOT NULL)")
        .execute(conn)?;
    sql_query(
        "INSERT INTO shop_duplicates (absorbed) SELECT 0 WHERE NOT EXISTS (SELECT FROM shop_duplicates)",
    )
    .execute(conn)?;
    Ok(())
}

/// Installs the service's database and returns its participant, not yet running.
pub fn participant(
    service: Service,
    shop: &ShopSettings,
    settings: Settings,
    faults: Faults,
) -> anyhow::Result<Participant> {
    shop.install(service)?;
    let mut settings = settings;
    settings.redeliver_rate = faults.duplicate_rate;
    let ctx = Arc::new(Ctx {
        service,
        pool: shop.pool(service, settings.concurrency.clamp(1, 8) as u32)?,
        faults,
    });
    let builder = Participant::builder(service.name()).settings(settings);
    let builder = match service {
        Service::Inventory => inventory::handlers(builder, ctx),
        Service::Payments => payments::handlers(builder, ctx),
        Service::Shipping => shipping::handlers(builder, ctx),
    };
    Ok(builder.build()?)
}

/// Starts these services in this process (blocking set-up: call from `spawn_blocking` or before
/// the runtime is busy).
pub fn spawn(
    services: &[Service],
    shop: &ShopSettings,
    settings: &Settings,
    faults: &Faults,
) -> anyhow::Result<Vec<ParticipantHandle>> {
    let mut participants = Vec::new();
    for service in services {
        participants.push(participant(
            *service,
            shop,
            settings.clone(),
            faults.clone(),
        )?);
    }
    Ok(participants.into_iter().map(Participant::spawn).collect())
}
