//! The benchmark's command line.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// How sagas are offered to the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A fixed number of sagas in flight: a new one is submitted when one finishes.
    Closed,
    /// Sagas submitted at a fixed rate whatever the coordinator does (latency from the intended start).
    Open,
    /// Participants paused while every saga is submitted, then resumed: how fast a backlog drains
    /// (with `--restart`, the coordinator is restarted while the backlog waits).
    Backlog,
}

/// How the coordinator is stopped in `--restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: a graceful stop.
    Term,
}

/// Submits sagas to a coordinator over HTTP, answers its commands from in-process participants at once,
/// and reports sagas/s, end-to-end latency, Postgres commits per saga and the coordinator's CPU.
#[derive(Debug, Clone, Parser)]
#[command(name = "bench", version)]
pub struct Options {
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,

    /// Sagas measured (after the warm-up).
    #[arg(long, default_value_t = 5_000)]
    pub sagas: u64,

    /// Sagas run before measuring starts (closed and open modes).
    #[arg(long, default_value_t = 300)]
    pub warmup: u64,

    /// Sagas in flight (closed mode), or concurrent submissions (backlog mode).
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,

    /// Sagas offered per second (open mode).
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,

    /// Steps per saga.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,

    /// Run every step in parallel instead of one after another.
    #[arg(long)]
    pub parallel: bool,

    /// Bytes of saga payload (a JSON string of this length).
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,

    /// Each step's reply timeout; long enough that a paused backlog does not time out.
    #[arg(long, default_value_t = 600_000)]
    pub step_timeout_ms: u64,

    /// Backlog mode: restart the coordinator while the backlog waits.
    #[arg(long, value_enum)]
    pub restart: Option<Restart>,

    /// Coordinators started on the one database and namespace, with instance ids `bench-1`,
    /// `bench-2`, ... Submissions go to each in turn; one that cannot answer is skipped for the next
    /// (each submission then carries an idempotency key, so that sending it again is safe).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,

    /// Closed and open modes, with `--instances` 2 or more: SIGKILL the last coordinator this many
    /// seconds into the run, and report how long until its partitions had other owners and whether
    /// every saga still finished.
    #[arg(long, value_name = "SECS", conflicts_with = "term_one_after")]
    pub kill_one_after: Option<f64>,

    /// Like `--kill-one-after`, with SIGTERM: a graceful stop, which hands its partitions over.
    #[arg(long, value_name = "SECS")]
    pub term_one_after: Option<f64>,

    /// The whole run stops after this many seconds, reporting what finished.
    #[arg(long, default_value_t = 300)]
    pub max_secs: u64,

    /// Attach to a running coordinator at this URL instead of starting one (give `--database-url`
    /// and `--namespace` of that coordinator; `--coordinator-pid` for its CPU and memory).
    #[arg(long)]
    pub url: Option<String>,

    /// Pid of an attached coordinator, for CPU and memory figures.
    #[arg(long)]
    pub coordinator_pid: Option<u32>,

    /// The coordinator binary to start (default: `coordinator` next to this binary, else this binary
    /// itself acting as the coordinator).
    #[arg(long)]
    pub coordinator_bin: Option<PathBuf>,

    /// Extra `KEY=VALUE` settings for the started coordinator (e.g. `SAGA_DB_POOL_SIZE=8`).
    #[arg(long = "coordinator-env")]
    pub coordinator_env: Vec<String>,

    /// Postgres server, without a database name (a fresh database `bench_<id>` is created on it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub pg_server: String,

    /// Query parameters of every database URL built on `--pg-server`. Loopback needs no TLS, and the
    /// floor-probe connects without it too; Debian's Postgres offers TLS, which libpq would take.
    #[arg(long, default_value = "sslmode=disable")]
    pub pg_params: String,

    /// The coordinator's database (default: a fresh one on `--pg-server`, dropped at the end).
    #[arg(long)]
    pub database_url: Option<String>,

    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,

    /// AMQP namespace (default: a fresh `bench<id>`, deleted at the end).
    #[arg(long)]
    pub namespace: Option<String>,

    /// Keep the database and the AMQP namespace after the run.
    #[arg(long)]
    pub keep: bool,

    /// Commands each participant holds unacknowledged at once.
    #[arg(long, default_value_t = 256)]
    pub participant_prefetch: u16,

    /// How long to wait before reading commit counts: an idle Postgres backend reports its
    /// statistics up to 10 s late (PostgreSQL 15).
    #[arg(long, default_value_t = 11_000)]
    pub stats_settle_ms: u64,

    /// Closed and open modes: while the load runs, read the overview, the in-flight list and
    /// searches (by key, by name and state, by error text in a time range) one after another, and
    /// report each kind's latency (see `docs/benchmark.md`, issue 15).
    #[arg(long)]
    pub probe_reads: bool,

    /// The pause between two reads of `--probe-reads`.
    #[arg(long, default_value_t = 100)]
    pub probe_every_ms: u64,

    /// Print only the JSON line.
    #[arg(long)]
    pub json_only: bool,
}

impl Options {
    /// `--kill-one-after` or `--term-one-after`: how and when one coordinator is stopped.
    pub fn stop_one(&self) -> Option<(Restart, f64)> {
        match (self.kill_one_after, self.term_one_after) {
            (Some(secs), _) => Some((Restart::Kill, secs)),
            (None, Some(secs)) => Some((Restart::Term, secs)),
            (None, None) => None,
        }
    }

    /// Combinations the bench cannot run, refused before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.instances >= 1, "--instances must be at least 1");
        if self.instances > 1 {
            anyhow::ensure!(
                self.url.is_none(),
                "--instances starts the coordinators: it cannot attach to --url"
            );
            anyhow::ensure!(
                self.restart.is_none(),
                "--restart restarts the one coordinator: not with --instances"
            );
        }
        if self.stop_one().is_some() {
            anyhow::ensure!(
                self.instances >= 2,
                "--kill-one-after and --term-one-after need --instances 2 or more"
            );
            anyhow::ensure!(
                self.mode != Mode::Backlog,
                "--kill-one-after and --term-one-after run in the closed and open modes \
                 (the backlog mode has --restart)"
            );
        }
        Ok(())
    }

    /// A small configuration for tests: few sagas, a few seconds.
    pub fn tiny() -> Options {
        Options::parse_from([
            "bench",
            "--sagas",
            "20",
            "--warmup",
            "2",
            "--inflight",
            "4",
            "--max-secs",
            "120",
            "--stats-settle-ms",
            "1000",
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        Options::parse_from(std::iter::once("bench").chain(args.iter().copied()))
    }

    #[test]
    fn stopping_one_needs_several_instances_and_a_running_load() {
        assert!(parse(&[]).check().is_ok());
        assert!(parse(&["--instances", "3", "--kill-one-after", "5"])
            .check()
            .is_ok());
        assert_eq!(
            parse(&["--instances", "2", "--term-one-after", "1.5"]).stop_one(),
            Some((Restart::Term, 1.5))
        );
        for refused in [
            &["--kill-one-after", "5"][..],
            &[
                "--instances",
                "3",
                "--mode",
                "backlog",
                "--term-one-after",
                "5",
            ],
            &["--instances", "2", "--mode", "backlog", "--restart", "kill"],
            &["--instances", "2", "--url", "http://127.0.0.1:8080"],
            &["--instances", "0"],
        ] {
            assert!(parse(refused).check().is_err(), "{refused:?}");
        }
        let both = Options::try_parse_from([
            "bench",
            "--instances",
            "3",
            "--kill-one-after",
            "1",
            "--term-one-after",
            "1",
        ]);
        assert!(both.is_err(), "one way of stopping at a time");
    }
}
