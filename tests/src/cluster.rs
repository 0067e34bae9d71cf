//! Several coordinators on one database and one AMQP namespace, as one coordinator (issue 13:
//! partitioned ownership of sagas with fenced leases).
//!
//! - [`Cluster`]: N `coordinator serve` processes with distinct `SAGA_INSTANCE_ID`s (`c1`, `c2`, ...)
//!   and short leases; one of them can be frozen (SIGSTOP), thawed (SIGCONT), killed (SIGKILL),
//!   stopped (SIGTERM) and started again with the same id.
//! - [`ClusterClient`]: a client that sends each request to the next running instance and, when
//!   one cannot answer (connection refused, timeout, 502/503/504), sends it again to another: what
//!   a load balancer with retries does in front of them.
//! - [`ClusterDb`]: what the coordinators' database says: `partition_leases` ([`Leases`]), each
//!   saga's partition, and the event log with the lease epoch each event was written under.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz};
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::wait::eventually;
use crate::{CoordinatorProcess, TestDb, TestNamespace};

pub use testkit::namespace::DEFAULT_PARTITIONS;

/// How a [`Cluster`] is started.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// How many coordinators.
    pub instances: usize,
    /// `SAGA_LEASE_TTL_MS`: short, so that a takeover happens within a test.
    pub lease_ttl: Duration,
    /// `SAGA_PARTITIONS`; `None` leaves the coordinator's default ([`DEFAULT_PARTITIONS`]).
    pub partitions: Option<u32>,
    /// More settings for every instance (they win over the ones above).
    pub env: Vec<(String, String)>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            instances: 3,
            lease_ttl: Duration::from_millis(2_000),
            partitions: None,
            env: Vec::new(),
        }
    }
}

impl ClusterSettings {
    /// The default settings with `instances` coordinators.
    pub fn instances(instances: usize) -> ClusterSettings {
        ClusterSettings {
            instances,
            ..ClusterSettings::default()
        }
    }

    /// How many partitions the coordinators run with.
    pub fn partition_count(&self) -> usize {
        self.partitions.unwrap_or(DEFAULT_PARTITIONS) as usize
    }
}

/// The `SAGA_INSTANCE_ID` of the `i`-th instance (from 0): `c1`, `c2`, ...
pub fn instance_id(i: usize) -> String {
    format!("c{}", i + 1)
}

/// The base URLs the [`ClusterClient`] may send to: `None` for an instance that is stopped or frozen.
type Endpoints = Arc<Mutex<Vec<Option<String>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// N coordinators on one database and namespace. Dropping it kills every one (SIGKILL).
pub struct Cluster {
    bin: &'static str,
    database_url: String,
    namespace: String,
    settings: ClusterSettings,
    members: Vec<Option<CoordinatorProcess>>,
    frozen: Vec<bool>,
    endpoints: Endpoints,
    db: ClusterDb,
}

impl Cluster {
    /// Starts `settings.instances` coordinators (`bin`: `env!("CARGO_BIN_EXE_coordinator-under-test")`)
    /// on `db` and `ns`, one after the other, each until it serves every request.
    pub async fn start(
        bin: &'static str,
        db: &TestDb,
        ns: &TestNamespace,
        settings: ClusterSettings,
    ) -> Cluster {
        if let Some(partitions) = settings.partitions {
            ns.set_partitions(partitions);
        }
        let n = settings.instances;
        let mut cluster = Cluster {
            bin,
            database_url: db.url().to_string(),
            namespace: ns.name().to_string(),
            settings,
            members: (0..n).map(|_| None).collect(),
            frozen: vec![false; n],
            endpoints: Arc::new(Mutex::new(vec![None; n])),
            db: ClusterDb::new(db.url()),
        };
        for i in 0..n {
            cluster.restart(i).await;
        }
        cluster
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The `SAGA_INSTANCE_ID` of instance `i`.
    pub fn id(&self, i: usize) -> String {
        instance_id(i)
    }

    /// Instance `i`'s process; panics if it is not running.
    pub fn process(&self, i: usize) -> &CoordinatorProcess {
        self.members[i]
            .as_ref()
            .unwrap_or_else(|| panic!("coordinator {} is not running", instance_id(i)))
    }

    /// Instance `i`'s HTTP API; panics if it is not running.
    pub fn api(&self, i: usize) -> &crate::Api {
        self.process(i).api()
    }

    /// Whether instance `i` runs and is not frozen.
    pub fn is_live(&self, i: usize) -> bool {
        self.members[i].is_some() && !self.frozen[i]
    }

    /// The ids of the running, unfrozen instances.
    pub fn live_ids(&self) -> Vec<String> {
        (0..self.len())
            .filter(|&i| self.is_live(i))
            .map(instance_id)
            .collect()
    }

    /// A client over every live instance (it follows stops, freezes and restarts).
    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(Arc::clone(&self.endpoints))
    }

    /// The coordinators' database.
    pub fn db(&self) -> &ClusterDb {
        &self.db
    }

    fn env_of(&self, i: usize) -> Vec<(String, String)> {
        let mut env = vec![
            ("SAGA_INSTANCE_ID".to_string(), instance_id(i)),
            (
                "SAGA_LEASE_TTL_MS".to_string(),
                self.settings.lease_ttl.as_millis().to_string(),
            ),
        ];
        if let Some(partitions) = self.settings.partitions {
            env.push(("SAGA_PARTITIONS".to_string(), partitions.to_string()));
        }
        env.extend(self.settings.env.iter().cloned());
        env
    }

    fn set_endpoint(&self, i: usize, url: Option<String>) {
        lock(&self.endpoints)[i] = url;
    }

    /// Starts instance `i` (again) with its id and waits until it serves every request; panics if
    /// it is running.
    pub async fn restart(&mut self, i: usize) {
        assert!(
            self.members[i].is_none(),
            "coordinator {} is still running",
            instance_id(i)
        );
        let (bin, url, namespace, env) = (
            self.bin,
            self.database_url.clone(),
            self.namespace.clone(),
            self.env_of(i),
        );
        let process = tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            CoordinatorProcess::start(bin, &url, &crate::amqp_url(), &namespace, &env)
        })
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("starting coordinator {}: {e:#}", instance_id(i)));
        self.set_endpoint(i, Some(process.api().base_url.clone()));
        self.frozen[i] = false;
        self.members[i] = Some(process);
    }

    /// SIGKILL to instance `i`, then reaps it.
    pub fn kill(&mut self, i: usize) {
        self.set_endpoint(i, None);
        if let Some(mut process) = self.members[i].take() {
            process.kill();
        }
        self.frozen[i] = false;
    }

    /// Sends SIGTERM to instance `i`; returns when it was sent. It stays in the client's rotation
    /// until [`Cluster::wait_exit`] reaped it, as behind a load balancer that has not noticed yet:
    /// what it refuses while stopping is sent to another instance.
    pub fn sigterm(&mut self, i: usize) -> Instant {
        self.process(i)
            .signal("TERM")
            .unwrap_or_else(|e| panic!("SIGTERM to {}: {e:#}", instance_id(i)));
        Instant::now()
    }

    /// Waits up to `timeout` for instance `i` to exit after a signal and reaps it.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut process = self.members[i]
            .take()
            .with_context(|| format!("coordinator {} is not running", instance_id(i)))?;
        self.set_endpoint(i, None);
        self.frozen[i] = false;
        tokio::task::spawn_blocking(move || process.wait_exit(timeout))
            .await
            .context("join")?
    }

    /// SIGSTOP to instance `i`: it keeps its sockets and its leases' rows but does nothing, as a
    /// process in a long GC pause or a VM that was suspended. Taken out of the client's rotation.
    pub fn freeze(&mut self, i: usize) {
        self.set_endpoint(i, None);
        self.process(i)
            .signal("STOP")
            .unwrap_or_else(|e| panic!("SIGSTOP to {}: {e:#}", instance_id(i)));
        self.frozen[i] = true;
    }

    /// SIGCONT to a frozen instance `i`, which goes back into the client's rotation.
    pub fn thaw(&mut self, i: usize) {
        self.process(i)
            .signal("CONT")
            .unwrap_or_else(|e| panic!("SIGCONT to {}: {e:#}", instance_id(i)));
        self.frozen[i] = false;
        self.set_endpoint(i, Some(self.api(i).base_url.clone()));
    }

    /// Waits until every partition is owned by a live instance and each live instance owns about
    /// its share (P/N, give or take one): the state a cluster settles in. Returns the leases.
    pub async fn wait_balanced(&self, timeout: Duration) -> Leases {
        let live = self.live_ids();
        let partitions = self.settings.partition_count();
        let mut last = String::from("none read");
        let found = tokio::time::timeout(timeout, async {
            loop {
                match self.db.try_leases().await {
                    Ok(leases) if leases.is_balanced_over(&live, partitions) => return leases,
                    Ok(leases) => last = leases.to_string(),
                    Err(e) => last = format!("unreadable: {e:#}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "the partitions were not spread over {live:?} within {timeout:?}; last leases: {last}"
            )
        })
    }

    /// Waits until none of `partitions` is owned by `owner` or by nobody (each has a new owner), and
    /// returns how long after `since` that was observed, with the leases then.
    pub async fn wait_taken_over(
        &self,
        owner: &str,
        partitions: &[i32],
        since: Instant,
        timeout: Duration,
    ) -> (Duration, Leases) {
        let what = format!("partitions {partitions:?} of {owner} to have other owners");
        let leases = eventually(&what, timeout, async || {
            let leases = self.db.try_leases().await.ok()?;
            partitions
                .iter()
                .all(|p| leases.owner_of(*p).is_some_and(|o| o != owner))
                .then_some(leases)
        })
        .await;
        (since.elapsed(), leases)
    }

    /// `GET /readyz` of instance `i` (its JSON body, whatever the status).
    pub async fn readyz(&self, i: usize) -> Option<Value> {
        let response = self
            .api(i)
            .request(Method::GET, "/readyz")
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// `GET /metrics` of instance `i`, as text.
    pub async fn metrics(&self, i: usize) -> Option<String> {
        let response = self
            .api(i)
            .request(Method::GET, "/metrics")
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    }

    /// The value of the unlabelled metric `name` on instance `i` (a counter's `_total` sample or a
    /// gauge), if it is exposed.
    pub async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        sample(&self.metrics(i).await?, name)
    }
}

/// The value of the unlabelled sample `name` in Prometheus text.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// One answer through the [`ClusterClient`].
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// The body as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
    /// The instance that answered (its index).
    pub instance: usize,
}

/// Sends each request to the next live instance (round robin); when that one cannot answer
/// (connection refused or reset, timeout, 502/503/504) sends it again to another, for up to
/// [`ClusterClient::patience`]. Cheap to clone; clones share the rotation and the counters.
#[derive(Clone)]
pub struct ClusterClient {
    endpoints: Endpoints,
    http: reqwest::Client,
    next: Arc<AtomicUsize>,
    retried: Arc<AtomicUsize>,
    patience: Duration,
}

impl ClusterClient {
    fn new(endpoints: Endpoints) -> ClusterClient {
        // Shorter than the API client's: a request stuck on an instance that was frozen under it
        // is sent to another one sooner.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("building the HTTP client");
        ClusterClient {
            endpoints,
            http,
            next: Arc::new(AtomicUsize::new(0)),
            retried: Arc::new(AtomicUsize::new(0)),
            patience: Duration::from_secs(60),
        }
    }

    /// How long a request is retried on other instances before it counts as failed.
    pub fn patience(mut self, patience: Duration) -> ClusterClient {
        self.patience = patience;
        self
    }

    /// Requests sent again to another instance so far.
    pub fn retried(&self) -> usize {
        self.retried.load(Ordering::SeqCst)
    }

    /// The next live instance in the rotation.
    fn pick(&self) -> Option<(usize, String)> {
        let endpoints = lock(&self.endpoints);
        let n = endpoints.len();
        (0..n).find_map(|_| {
            let i = self.next.fetch_add(1, Ordering::SeqCst) % n;
            endpoints[i].clone().map(|url| (i, url))
        })
    }

    /// Sends `method path` (with a JSON `body`) to the next live instance, and to others while
    /// they cannot answer. `Err` says why the last attempt failed, once patience ran out.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let start = Instant::now();
        loop {
            let error = match self.pick() {
                None => "no instance is up".to_string(),
                Some((instance, base)) => {
                    let mut request = self.http.request(method.clone(), format!("{base}{path}"));
                    if let Some(body) = body {
                        request = request.json(body);
                    }
                    match request.send().await {
                        Ok(response) if !retryable(response.status()) => {
                            let status = response.status();
                            let text = response.text().await.unwrap_or_default();
                            return Ok(Answer {
                                status,
                                body: serde_json::from_str(&text).unwrap_or(Value::Null),
                                instance,
                            });
                        }
                        Ok(response) => {
                            let status = response.status();
                            let text = response.text().await.unwrap_or_default();
                            format!("{} answered {status}: {text}", instance_id(instance))
                        }
                        Err(e) => format!("{}: {e}", instance_id(instance)),
                    }
                }
            };
            if start.elapsed() > self.patience {
                return Err(format!(
                    "{method} {path}: gave up after {:?}: {error}",
                    self.patience
                ));
            }
            self.retried.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Submits a saga (give it a `key`, so that sending it again after a lost answer is safe);
    /// `Ok` with its id on 201 or 200.
    pub async fn submit(&self, definition: &Value) -> Result<String, String> {
        let answer = self
            .send(Method::POST, "/api/v1/sagas", Some(definition))
            .await?;
        match answer.status {
            StatusCode::CREATED | StatusCode::OK => answer
                .body
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("a submission answered without an id: {}", answer.body)),
            status => Err(format!(
                "{} answered the submission {status}: {}",
                instance_id(answer.instance),
                answer.body
            )),
        }
    }

    /// The saga document from any instance, if one answered 200.
    pub async fn saga(&self, id: &str) -> Option<Value> {
        let answer = self
            .send(Method::GET, &format!("/api/v1/sagas/{id}"), None)
            .await
            .ok()?;
        (answer.status == StatusCode::OK).then_some(answer.body)
    }

    /// Polls the saga (on any instance) until its state is one of `states`; panics after `timeout`
    /// or when it settles in another final state, with its document and events.
    pub async fn wait_for_state(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        loop {
            if let Some(doc) = self.saga(id).await {
                let state = crate::api::state(&doc).to_string();
                if states.contains(&state.as_str()) {
                    return doc;
                }
                let settled = crate::FINAL_STATES.contains(&state.as_str());
                last = doc;
                if settled || start.elapsed() > timeout {
                    let events = self
                        .send(Method::GET, &format!("/api/v1/sagas/{id}/events"), None)
                        .await
                        .map_or(Value::Null, |a| a.body);
                    panic!(
                        "saga {id} is {state:?} after {:?}, expected one of {states:?}\n\
                         document: {last:#}\nevents: {events:#}",
                        start.elapsed()
                    );
                }
            } else if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} reading saga {id}; last document: {last:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// One row of `partition_leases`.
#[derive(Clone, Debug, QueryableByName)]
pub struct Lease {
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub owner: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub epoch: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub expires_at: Option<DateTime<Utc>>,
    /// `expires_at` is after Postgres' `now()`.
    #[diesel(sql_type = Bool)]
    pub live: bool,
}

/// The whole `partition_leases` table, by partition.
#[derive(Clone, Debug)]
pub struct Leases(pub Vec<Lease>);

impl Leases {
    pub fn partitions(&self) -> usize {
        self.0.len()
    }

    pub fn lease(&self, partition: i32) -> Option<&Lease> {
        self.0.iter().find(|l| l.partition == partition)
    }

    pub fn owner_of(&self, partition: i32) -> Option<&str> {
        self.lease(partition).and_then(|l| l.owner.as_deref())
    }

    /// `(partition, epoch)` of every partition `owner` holds (expired or not).
    pub fn held_by(&self, owner: &str) -> Vec<(i32, i64)> {
        self.0
            .iter()
            .filter(|l| l.owner.as_deref() == Some(owner))
            .map(|l| (l.partition, l.epoch))
            .collect()
    }

    /// The partitions `owner` holds.
    pub fn partitions_of(&self, owner: &str) -> Vec<i32> {
        self.held_by(owner).into_iter().map(|(p, _)| p).collect()
    }

    /// How many partitions each owner holds.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for owner in self.0.iter().filter_map(|l| l.owner.clone()) {
            *counts.entry(owner).or_default() += 1;
        }
        counts
    }

    /// Partitions without an owner.
    pub fn unowned(&self) -> Vec<i32> {
        self.0
            .iter()
            .filter(|l| l.owner.is_none())
            .map(|l| l.partition)
            .collect()
    }

    /// Every one of `partitions` partitions has a live lease of one of `owners`, and each of them
    /// holds its share give or take one.
    pub fn is_balanced_over(&self, owners: &[String], partitions: usize) -> bool {
        if owners.is_empty() || self.partitions() != partitions {
            return false;
        }
        let all_held = self.0.iter().all(|l| {
            l.live
                && l.owner
                    .as_ref()
                    .is_some_and(|o| owners.iter().any(|w| w == o))
        });
        let share = partitions / owners.len();
        let counts = self.counts();
        let fair = owners.iter().all(|o| {
            let n = counts.get(o).copied().unwrap_or(0);
            n + 1 >= share && n <= share + 2
        });
        all_held && fair
    }

    /// The sum of every partition's epoch: it grows by one with every change of owner.
    pub fn epoch_sum(&self) -> i64 {
        self.0.iter().map(|l| l.epoch).sum()
    }
}

impl fmt::Display for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = self
            .counts()
            .into_iter()
            .map(|(o, n)| format!("{o}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        write!(
            f,
            "{} partitions ({counts}; unowned {:?}; expired {:?})",
            self.partitions(),
            self.unowned(),
            self.0
                .iter()
                .filter(|l| l.owner.is_some() && !l.live)
                .map(|l| l.partition)
                .collect::<Vec<_>>()
        )
    }
}

/// An event of the log with the partition of its saga and the lease epoch it was written under.
#[derive(Clone, Debug, QueryableByName)]
pub struct FencedEvent {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Text)]
    pub saga_id: String,
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub epoch: Option<i64>,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
}

/// A saga as the database has it, with how many final events (`committed`, `compensated`,
/// `aborted`) its log holds.
#[derive(Clone, Debug, QueryableByName)]
pub struct StoredSaga {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub key: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub final_events: i64,
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = Nullable<BigInt>)]
    n: Option<i64>,
}

/// Reads of the coordinators' database (one connection, reused; blocking work on tokio's pool).
#[derive(Clone)]
pub struct ClusterDb {
    url: String,
    conn: Arc<Mutex<Option<PgConnection>>>,
}

impl ClusterDb {
    pub fn new(url: &str) -> ClusterDb {
        ClusterDb {
            url: url.to_string(),
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `f` on the connection (made if needed; dropped after an error).
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PgConnection) -> diesel::QueryResult<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (url, conn) = (self.url.clone(), Arc::clone(&self.conn));
        tokio::task::spawn_blocking(move || {
            let mut slot = lock(&conn);
            if slot.is_none() {
                *slot = Some(
                    PgConnection::establish(&url)
                        .with_context(|| format!("connecting to {url}"))?,
                );
            }
            let connection = slot.as_mut().context("no connection")?;
            let result = f(connection);
            if result.is_err() {
                *slot = None;
            }
            Ok(result?)
        })
        .await
        .context("join")?
    }

    /// The leases, or why they could not be read.
    pub async fn try_leases(&self) -> anyhow::Result<Leases> {
        let rows: Vec<Lease> = self
            .with(|c| {
                sql_query(
                    "SELECT partition, owner, epoch, expires_at,
                            coalesce(expires_at > now(), false) AS live
                     FROM partition_leases ORDER BY partition",
                )
                .load(c)
            })
            .await?;
        Ok(Leases(rows))
    }

    /// The leases; panics if they cannot be read.
    pub async fn leases(&self) -> Leases {
        self.try_leases()
            .await
            .unwrap_or_else(|e| panic!("reading partition_leases: {e:#}"))
    }

    /// The partition of saga `id`.
    pub async fn partition_of(&self, id: &str) -> i32 {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Integer)]
            partition: i32,
        }
        let id = id.to_string();
        let what = format!("the partition of saga {id}");
        let row: Row = self
            .with(move |c| {
                sql_query("SELECT partition FROM sagas WHERE id = $1::uuid")
                    .bind::<Text, _>(id)
                    .get_result(c)
            })
            .await
            .unwrap_or_else(|e| panic!("reading {what}: {e:#}"));
        row.partition
    }

    /// The highest `seq` of the event log (0 when empty).
    pub async fn max_event_seq(&self) -> i64 {
        let row: Number = self
            .with(|c| sql_query("SELECT max(seq) AS n FROM saga_events").get_result(c))
            .await
            .unwrap_or_else(|e| panic!("reading the event log: {e:#}"));
        row.n.unwrap_or(0)
    }

    /// Events after `after_seq` of sagas in a partition of `held`, written under the epoch it is
    /// paired with there: what an owner holding exactly those leases wrote after that point.
    pub async fn events_written_under(
        &self,
        after_seq: i64,
        held: &[(i32, i64)],
    ) -> Vec<FencedEvent> {
        let (partitions, epochs): (Vec<i32>, Vec<i64>) = held.iter().copied().unzip();
        self.with(move |c| {
            sql_query(
                "SELECT e.seq, e.saga_id::text AS saga_id, s.partition, e.epoch, e.kind, e.at
                 FROM saga_events e JOIN sagas s ON s.id = e.saga_id
                 WHERE e.seq > $1
                   AND (s.partition, e.epoch) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))
                 ORDER BY e.seq",
            )
            .bind::<BigInt, _>(after_seq)
            .bind::<Array<Integer>, _>(partitions)
            .bind::<Array<BigInt>, _>(epochs)
            .load(c)
        })
        .await
        .unwrap_or_else(|e| panic!("reading the event log: {e:#}"))
    }

    /// The event log of saga `id`, in order.
    pub async fn events_of(&self, id: &str) -> Vec<FencedEvent> {
        let id = id.to_string();
        self.with(move |c| {
            sql_query(
                "SELECT e.seq, e.saga_id::text AS saga_id, s.partition, e.epoch, e.kind, e.at
                 FROM saga_events e JOIN sagas s ON s.id = e.saga_id
                 WHERE e.saga_id = $1::uuid ORDER BY e.seq",
            )
            .bind::<Text, _>(id)
            .load(c)
        })
        .await
        .unwrap_or_else(|e| panic!("reading the event log: {e:#}"))
    }

    /// Every saga, with its state, partition, key and the number of final events in its log.
    pub async fn sagas(&self) -> Vec<StoredSaga> {
        self.with(|c| {
            sql_query(
                "SELECT s.id::text AS id, s.state, s.partition, s.idempotency_key AS key,
                        count(e.seq) FILTER (WHERE e.kind IN ('committed', 'compensated', 'aborted'))
                            AS final_events
                 FROM sagas s LEFT JOIN saga_events e ON e.saga_id = s.id
                 GROUP BY s.id ORDER BY s.id",
            )
            .load(c)
        })
        .await
        .unwrap_or_else(|e| panic!("reading the sagas: {e:#}"))
    }

    /// The ids of the sagas in `partitions` that are not settled yet.
    pub async fn unsettled_in(&self, partitions: &[i32]) -> Vec<String> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            id: String,
        }
        let partitions = partitions.to_vec();
        let rows: Vec<Row> = self
            .with(move |c| {
                sql_query(
                    "SELECT id::text AS id FROM sagas
                     WHERE partition = ANY($1)
                       AND state NOT IN ('committed', 'compensated', 'aborted', 'failed')",
                )
                .bind::<Array<Integer>, _>(partitions)
                .load(c)
            })
            .await
            .unwrap_or_else(|e| panic!("reading the sagas: {e:#}"));
        rows.into_iter().map(|r| r.id).collect()
    }

    /// Outbox rows not yet confirmed by RabbitMQ.
    pub async fn outbox_rows(&self) -> i64 {
        let row: Number = self
            .with(|c| sql_query("SELECT count(*) AS n FROM outbox").get_result(c))
            .await
            .unwrap_or_else(|e| panic!("reading the outbox: {e:#}"));
        row.n.unwrap_or(0)
    }
}
