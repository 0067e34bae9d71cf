//! The coordinators under test: child processes (one, or `--instances` on one database and
//! namespace) with their own database and namespace (or one attached to by URL), the trigger that
//! reports final states, Postgres commit counts, and the partition leases they share.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Text};

use crate::finals::{Finals, Listener};
use crate::options::{Options, Restart};

/// The line `coordinator serve` prints once it listens.
const LISTENING_PREFIX: &str = "coordinator listening on http://";
/// Environment variable that makes the bench binary act as `coordinator` (see `main.rs`).
pub const RUN_AS_COORDINATOR: &str = "BENCH_RUN_AS_COORDINATOR";
/// Recovery of a large backlog happens before the coordinator listens.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long removing the bench's namespace may take before it is left behind.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);
/// Every statement the bench runs itself is short; one stuck behind a lock fails instead.
const SESSION_LIMITS: &str = "SET statement_timeout = '30s'; SET lock_timeout = '5s'";
/// The Postgres channel the trigger notifies with the id of each saga that reached a final state.
pub const FINAL_CHANNEL: &str = "bench_saga_final";

/// A notification per saga reaching a final state (or `failed`), sent when its transaction commits.
const FINAL_TRIGGER: &str = "
CREATE OR REPLACE FUNCTION bench_saga_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_saga_final', NEW.id::text); RETURN NULL; END $$;
DROP TRIGGER IF EXISTS bench_saga_final ON sagas;
CREATE TRIGGER bench_saga_final AFTER UPDATE OF state ON sagas FOR EACH ROW
WHEN (NEW.state IN ('committed', 'compensated', 'aborted', 'failed')
      AND OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION bench_saga_final();
";

#[derive(QueryableByName)]
struct Commits {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Partition {
    #[diesel(sql_type = Integer)]
    partition: i32,
}

/// One coordinator process (or the one attached to).
pub struct Instance {
    /// Its `SAGA_INSTANCE_ID` (`bench-1`, ...); empty for one attached to, which keeps its own.
    pub id: String,
    /// Base URL of its HTTP API, e.g. `http://127.0.0.1:41234`.
    pub http: String,
    process: Option<Child>,
    pid: Option<u32>,
}

/// The coordinators being measured.
pub struct Target {
    pub instances: Vec<Instance>,
    pub database_url: String,
    pub database_name: String,
    pub pg_server: String,
    /// `?` and `--pg-params`, or nothing.
    pg_params: String,
    pub namespace: String,
    pub amqp_url: String,
    own_database: bool,
    own_namespace: bool,
    bin: Option<PathBuf>,
    extra_env: Vec<(String, String)>,
}

/// `url` with `--pg-params` as its query string.
fn with_params(url: &str, opts: &Options) -> String {
    if opts.pg_params.is_empty() {
        url.to_string()
    } else {
        format!("{url}?{}", opts.pg_params)
    }
}

impl Target {
    /// Starts a coordinator (or attaches to one) as the options say.
    pub fn prepare(opts: &Options) -> anyhow::Result<Target> {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let pg_server = opts.pg_server.trim_end_matches('/').to_string();
        let (database_url, own_database) = match &opts.database_url {
            Some(url) => (url.clone(), false),
            None => (
                with_params(&format!("{pg_server}/bench_{run_id}"), opts),
                true,
            ),
        };
        let database_name = database_url
            .split('?')
            .next()
            .and_then(|u| u.rsplit('/').next())
            .unwrap_or_default()
            .to_string();
        let (namespace, own_namespace) = match &opts.namespace {
            Some(ns) => (ns.clone(), false),
            None => (format!("bench{run_id}"), true),
        };
        let extra_env = opts
            .coordinator_env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("--coordinator-env {kv:?} is not KEY=VALUE"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut target = Target {
            instances: Vec::new(),
            database_url,
            database_name,
            pg_server,
            pg_params: with_params("", opts),
            namespace,
            amqp_url: opts.amqp_url.clone(),
            own_database: own_database && opts.url.is_none() && !opts.keep,
            own_namespace: own_namespace && opts.url.is_none() && !opts.keep,
            bin: None,
            extra_env,
        };
        match &opts.url {
            Some(url) => target.instances.push(Instance {
                id: String::new(),
                http: url.clone(),
                process: None,
                pid: opts.coordinator_pid,
            }),
            None => {
                target.bin = Some(coordinator_bin(opts)?);
                for i in 0..opts.instances.max(1) {
                    // Named even when alone, so that its reply queue is known to clean up.
                    let id = format!("bench-{}", i + 1);
                    let instance = target.spawn(id)?;
                    target.instances.push(instance);
                }
            }
        }
        target.install_final_trigger()?;
        Ok(target)
    }

    /// Pid of the (first) coordinator process, when known.
    pub fn pid(&self) -> Option<u32> {
        self.instances.first().and_then(|i| i.pid)
    }

    /// Pids of the coordinator processes still running (or attached to).
    pub fn pids(&self) -> Vec<u32> {
        self.instances.iter().filter_map(|i| i.pid).collect()
    }

    /// Base URLs of every coordinator's HTTP API, in the order they were started.
    pub fn urls(&self) -> Vec<String> {
        self.instances.iter().map(|i| i.http.clone()).collect()
    }

    /// Takes instance `i`'s process out, to stop it: its id and the child (`None` if the bench did
    /// not start it or it is gone already).
    pub fn take_process(&mut self, i: usize) -> Option<(String, Child)> {
        let instance = self.instances.get_mut(i)?;
        let child = instance.process.take()?;
        instance.pid = None;
        Some((instance.id.clone(), child))
    }

    /// Starts `coordinator serve` (as instance `id`, unless empty) and waits until it listens.
    fn spawn(&self, id: String) -> anyhow::Result<Instance> {
        let bin = self.bin.clone().context("no coordinator binary")?;
        let mut command = Command::new(&bin);
        command
            // Makes a `bench` binary act as the coordinator; `coordinator` ignores it.
            .env(RUN_AS_COORDINATOR, "1")
            .arg("serve")
            .env("SAGA_DATABASE_URL", &self.database_url)
            .env("SAGA_AMQP_URL", &self.amqp_url)
            .env("SAGA_HTTP_ADDR", "127.0.0.1:0")
            .env("SAGA_NAMESPACE", &self.namespace)
            .env_remove("SAGA_API_TOKEN")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_COORDINATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !id.is_empty() {
            command.env("SAGA_INSTANCE_ID", &id);
        }
        for (k, v) in &self.extra_env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("running {} serve", bin.display()))?;
        let stdout = child.stdout.take().context("coordinator stdout")?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keep draining stdout after the line, or the child blocks on a full pipe.
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.trim().strip_prefix(LISTENING_PREFIX) {
                    if let Some(sender) = tx.take() {
                        let _ = sender.send(rest.trim_end_matches('/').to_string());
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("the coordinator did not start listening (exit status {status:?})");
            }
        };
        Ok(Instance {
            id,
            http: format!("http://{addr}"),
            pid: Some(child.id()),
            process: Some(child),
        })
    }

    /// Stops the coordinator (SIGKILL or SIGTERM) and starts it again on the same database and
    /// namespace. Answers how long the stop and the start (recovery included) took.
    pub fn restart(&mut self, how: Restart) -> anyhow::Result<(Duration, Duration)> {
        let Some((id, mut child)) = self.take_process(0) else {
            bail!("--restart needs a coordinator started by the bench");
        };
        let stopping = Instant::now();
        match how {
            Restart::Kill => child.kill()?,
            Restart::Term => {
                let status = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status()?;
                if !status.success() {
                    bail!("kill -TERM failed");
                }
            }
        }
        child.wait()?;
        let stopped = stopping.elapsed();
        let starting = Instant::now();
        self.instances[0] = self.spawn(id)?;
        Ok((stopped, starting.elapsed()))
    }

    fn connect(&self) -> anyhow::Result<PgConnection> {
        bounded_connection(&self.database_url)
    }

    fn admin(&self) -> anyhow::Result<PgConnection> {
        bounded_connection(&format!("{}/postgres{}", self.pg_server, self.pg_params))
    }

    /// The trigger's DDL waits for a lock on `sagas` that the running coordinator takes and
    /// releases all the time: it waits at most `lock_timeout` and is tried again.
    fn install_final_trigger(&self) -> anyhow::Result<()> {
        use diesel::connection::SimpleConnection;
        let mut conn = self.connect()?;
        let mut tries = 0;
        loop {
            tries += 1;
            match conn.batch_execute(FINAL_TRIGGER) {
                Ok(()) => return Ok(()),
                Err(e) if tries < 5 => {
                    eprintln!("bench: installing the final-state trigger: {e}; trying again");
                }
                Err(e) => return Err(e).context("installing the final-state trigger"),
            }
        }
    }

    /// Starts listening for final states (see [`crate::finals`]).
    pub async fn listen(&self, finals: Arc<Finals>) -> anyhow::Result<Listener> {
        Listener::start(&self.database_url, FINAL_CHANNEL, finals)
            .await
            .context("listening for final states")
    }

    /// Transactions committed in the coordinator's database so far (`pg_stat_database`), read from
    /// another database so that reading does not count. Statistics reach it up to a second late.
    pub fn commits(&self) -> anyhow::Result<i64> {
        let rows: Vec<Commits> =
            diesel::sql_query("SELECT xact_commit AS n FROM pg_stat_database WHERE datname = $1")
                .bind::<Text, _>(&self.database_name)
                .load(&mut self.admin()?)?;
        Ok(rows.first().map_or(0, |r| r.n))
    }

    /// Sagas in the database that are not in a final state (nor `failed`).
    pub fn unfinished(&self) -> anyhow::Result<i64> {
        let rows: Vec<Commits> = diesel::sql_query(
            "SELECT count(*) AS n FROM sagas
             WHERE state NOT IN ('committed', 'compensated', 'aborted', 'failed')",
        )
        .load(&mut self.connect()?)?;
        Ok(rows.first().map_or(0, |r| r.n))
    }

    /// Up to `n` keys of sagas spread over the table (a sample of its pages), for searches by key.
    pub fn sample_keys(&self, n: i64) -> anyhow::Result<Vec<String>> {
        #[derive(QueryableByName)]
        struct Key {
            #[diesel(sql_type = Text)]
            key: String,
        }
        let rows: Vec<Key> = diesel::sql_query(
            "SELECT idempotency_key AS key FROM sagas TABLESAMPLE SYSTEM (1)
             WHERE idempotency_key IS NOT NULL LIMIT $1",
        )
        .bind::<diesel::sql_types::BigInt, _>(n)
        .load(&mut self.connect()?)?;
        Ok(rows.into_iter().map(|r| r.key).collect())
    }

    /// The partitions instance `owner` holds now (`partition_leases`).
    pub fn partitions_of(&self, owner: &str) -> anyhow::Result<Vec<i32>> {
        partitions_held(&mut self.connect()?, owner)
    }

    /// How many partitions the coordinators run with (0 if the database has no leases).
    fn partition_count(&self) -> u32 {
        let count = || -> anyhow::Result<u32> {
            let rows: Vec<Commits> =
                diesel::sql_query("SELECT count(*) AS n FROM partition_leases")
                    .load(&mut self.connect()?)?;
            Ok(rows.first().map_or(0, |r| u32::try_from(r.n).unwrap_or(0)))
        };
        count().unwrap_or(0)
    }

    /// Stops the coordinators and removes the database and namespace the bench created. Best
    /// effort and bounded: what fails or hangs is reported and left behind.
    pub async fn cleanup(mut self, participants: &[String]) {
        self.stop_all();
        if self.own_namespace {
            let partitions = self.partition_count();
            let instances: Vec<String> = self.instances.iter().map(|i| i.id.clone()).collect();
            let deleted = delete_namespace(
                &self.amqp_url,
                &self.namespace,
                participants,
                &instances,
                partitions,
            );
            let outcome = tokio::time::timeout(CLEANUP_LIMIT, deleted)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {CLEANUP_LIMIT:?}")));
            if let Err(e) = outcome {
                eprintln!(
                    "bench: could not delete namespace {}: {e:#}",
                    self.namespace
                );
            }
        }
        if self.own_database {
            let name = self.database_name.clone();
            // Sync, so off the runtime's threads; its statement_timeout bounds it.
            let dropped = tokio::task::spawn_blocking(move || {
                let mut admin = self.admin()?;
                diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)?;
                anyhow::Ok(())
            })
            .await;
            match dropped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("bench: could not drop database: {e:#}"),
                Err(e) => eprintln!("bench: dropping the database failed: {e}"),
            }
        }
    }

    /// SIGKILLs every coordinator the bench started and reaps it.
    fn stop_all(&mut self) {
        for instance in &mut self.instances {
            if let Some(mut child) = instance.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Polls `partition_leases` of the database at `database_url` until none of `partitions` is held
/// by `owner` or by nobody (each has another owner), for up to `timeout`; the time from `since` when
/// that was seen (`None`: not within `timeout`).
pub fn wait_handover(
    database_url: &str,
    owner: &str,
    partitions: &[i32],
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Option<Duration>> {
    let mut conn = bounded_connection(database_url)?;
    let deadline = Instant::now() + timeout;
    loop {
        let rows: Vec<Partition> = diesel::sql_query(
            "SELECT partition FROM partition_leases
             WHERE partition = ANY($1) AND (owner IS NULL OR owner = $2)",
        )
        .bind::<Array<Integer>, _>(partitions)
        .bind::<Text, _>(owner)
        .load(&mut conn)
        .context("reading partition_leases")?;
        if rows.is_empty() {
            return Ok(Some(since.elapsed()));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection whose statements cannot wait forever (`SESSION_LIMITS`).
fn bounded_connection(url: &str) -> anyhow::Result<PgConnection> {
    use diesel::connection::SimpleConnection;
    let mut conn = PgConnection::establish(url).with_context(|| format!("connecting to {url}"))?;
    conn.batch_execute(SESSION_LIMITS)
        .context("setting the session's time limits")?;
    Ok(conn)
}

fn partitions_held(conn: &mut PgConnection, owner: &str) -> anyhow::Result<Vec<i32>> {
    let rows: Vec<Partition> =
        diesel::sql_query("SELECT partition FROM partition_leases WHERE owner = $1")
            .bind::<Text, _>(owner)
            .load(conn)
            .context("reading partition_leases")?;
    Ok(rows.into_iter().map(|r| r.partition).collect())
}

/// `--coordinator-bin`, else `coordinator` next to this binary, else this binary itself.
fn coordinator_bin(opts: &Options) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &opts.coordinator_bin {
        return Ok(bin.clone());
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("coordinator");
    Ok(if sibling.is_file() { sibling } else { me })
}

async fn delete_namespace(
    url: &str,
    ns: &str,
    participants: &[String],
    instances: &[String],
    partitions: u32,
) -> anyhow::Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    use contract::names;
    let mut queues = vec![
        names::replies_queue(ns),
        names::dead_letters_queue(ns),
        names::dead_commands_queue(ns),
    ];
    queues.extend(participants.iter().map(|p| names::participant_queue(ns, p)));
    // The replies queue of each partition, and of each coordinator.
    queues.extend((0..partitions).map(|p| names::partition_replies_queue(ns, p)));
    queues.extend(
        instances
            .iter()
            .filter(|id| !id.is_empty())
            .map(|id| names::instance_replies_queue(ns, id)),
    );
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [names::commands_exchange(ns), names::dead_exchange(ns)] {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    let _ = connection.close(200, "bench done".into()).await;
    Ok(())
}
