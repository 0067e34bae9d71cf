//! The figures of a run: a table for people and one JSON line for scripts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Recorder;
use crate::options::{Mode, Options, Restart};
use crate::procstat::{self, CpuUse};
use crate::reads::ReadFigures;

/// Extra figures of the backlog mode.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BacklogFigures {
    /// Submitting every saga while the participants were paused.
    pub submit_secs: f64,
    /// Coordinator memory with the whole backlog waiting.
    pub waiting_rss_bytes: u64,
    pub waiting_peak_rss_bytes: u64,
    /// `--restart`: stopping the coordinator, then starting it (recovery included) until it listened.
    pub restart_stop_secs: Option<f64>,
    pub restart_start_secs: Option<f64>,
    pub after_restart_rss_bytes: Option<u64>,
    /// From the restart (or the resume) to the first command that only a processed reply can cause.
    pub first_reply_processed_secs: Option<f64>,
    /// From the restart (or the resume) to the first saga in a final state.
    pub first_final_secs: Option<f64>,
    pub final_peak_rss_bytes: u64,
}

/// `--kill-one-after` / `--term-one-after`: one of several coordinators stopped mid-run.
#[derive(Debug, Clone, Serialize)]
pub struct StopOneFigures {
    pub how: Restart,
    /// Its `SAGA_INSTANCE_ID`.
    pub instance: String,
    /// Seconds into the run when it was stopped.
    pub after_secs: f64,
    /// Partitions it held just before.
    pub partitions: usize,
    /// From the signal until each of those partitions had another owner (`partition_leases`);
    /// `None`: not within two minutes.
    pub handover_secs: Option<f64>,
    /// From the signal until the process had exited.
    pub exit_secs: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub steps: usize,
    pub parallel: bool,
    pub payload_bytes: usize,
    pub inflight: usize,
    pub rate: Option<f64>,
    pub warmup: u64,
    pub submitted: u64,
    pub completed: u64,
    pub failed_submissions: u64,
    /// Measured sagas (latencies taken).
    pub measured: u64,
    pub secs: f64,
    pub sagas_per_s: f64,
    pub latency: Latency,
    /// Every transaction committed in the coordinator's database during the run (warm-up included),
    /// per completed saga.
    pub commits_per_saga: f64,
    pub commits: i64,
    pub cpu_cores: CpuUse,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub backlog: Option<BacklogFigures>,
    pub timed_out: bool,
    pub load_average: String,
    /// Coordinators sharing the database and namespace.
    pub instances: usize,
    /// Submissions sent again to another coordinator (one could not take it).
    pub submission_retries: u64,
    pub stop_one: Option<StopOneFigures>,
    /// Sagas in the database still unfinished at the end (`None`: not read).
    pub unfinished_sagas: Option<i64>,
    /// `--probe-reads`: each kind of read's latency.
    pub reads: Vec<ReadFigures>,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Report {
    pub fn new(
        opts: &Options,
        mut recorder: Recorder,
        commits: i64,
        cpu_cores: CpuUse,
        memory: Option<(u64, u64)>,
        backlog: Option<BacklogFigures>,
        timed_out: bool,
    ) -> Report {
        recorder.latencies_ms.sort_by(f64::total_cmp);
        let l = &recorder.latencies_ms;
        let secs = match (recorder.window_start, recorder.last_done) {
            (Some(start), Some(end)) => end.saturating_duration_since(start).as_secs_f64(),
            _ => 0.0,
        };
        let measured = l.len() as u64;
        let (rss, peak) = memory.unwrap_or_default();
        Report {
            mode: opts.mode,
            steps: opts.steps,
            parallel: opts.parallel,
            payload_bytes: opts.payload_bytes,
            inflight: opts.inflight,
            rate: (opts.mode == Mode::Open).then_some(opts.rate),
            warmup: if opts.mode == Mode::Backlog {
                0
            } else {
                opts.warmup
            },
            submitted: recorder.submitted,
            completed: recorder.completed,
            failed_submissions: recorder.failed_submissions,
            measured,
            secs,
            sagas_per_s: if secs > 0.0 {
                measured as f64 / secs
            } else {
                0.0
            },
            latency: Latency {
                p50_ms: percentile(l, 50.0),
                p90_ms: percentile(l, 90.0),
                p99_ms: percentile(l, 99.0),
                max_ms: percentile(l, 100.0),
            },
            commits_per_saga: commits as f64 / recorder.completed.max(1) as f64,
            commits,
            cpu_cores,
            rss_bytes: rss,
            peak_rss_bytes: peak,
            backlog,
            timed_out,
            load_average: procstat::load_average(),
            instances: opts.instances,
            submission_retries: 0,
            stop_one: None,
            unfinished_sagas: None,
            reads: Vec::new(),
        }
    }

    /// Every saga submitted reached its final state, and none is left unfinished in the database.
    pub fn every_saga_finished(&self) -> bool {
        !self.timed_out
            && self.failed_submissions == 0
            && self.completed == self.submitted
            && self.unfinished_sagas == Some(0)
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut t = String::new();
        let shape = format!(
            "{} step(s), {}, payload {} B",
            self.steps,
            if self.parallel {
                "parallel"
            } else {
                "sequential"
            },
            self.payload_bytes
        );
        let offered = match (self.mode, self.rate) {
            (Mode::Open, Some(rate)) => format!("open loop at {rate}/s"),
            (Mode::Closed, _) => format!("closed loop, {} in flight", self.inflight),
            _ => "backlog".to_string(),
        };
        let _ = writeln!(t, "{:<28} {offered}; {shape}", "mode");
        if self.instances > 1 {
            let _ = writeln!(
                t,
                "{:<28} {} on one database and namespace; {} submissions sent again to another",
                "coordinators", self.instances, self.submission_retries
            );
        }
        let _ = writeln!(
            t,
            "{:<28} {} measured ({} completed, {} submitted, {} failed submissions)",
            "sagas", self.measured, self.completed, self.submitted, self.failed_submissions
        );
        let _ = writeln!(t, "{:<28} {:.0}", "sagas/s", self.sagas_per_s);
        let _ = writeln!(
            t,
            "{:<28} p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            "latency ms (submit→final)",
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.max_ms
        );
        let _ = writeln!(
            t,
            "{:<28} {:.2} ({} in all)",
            "postgres commits/saga", self.commits_per_saga, self.commits
        );
        let c = &self.cpu_cores;
        let _ = writeln!(
            t,
            "{:<28} coordinator {:.2} ({:.3} ms/saga), postgres {:.2}, rabbitmq {:.2}, bench {:.2}, machine {:.2}",
            "cpu cores", c.coordinator, c.coordinator_ms_per_saga, c.postgres, c.rabbitmq, c.bench, c.machine
        );
        let _ = writeln!(
            t,
            "{:<28} {:.1} MiB (peak {:.1} MiB)",
            "coordinator rss",
            mib(self.rss_bytes),
            mib(self.peak_rss_bytes)
        );
        if let Some(b) = &self.backlog {
            let _ = writeln!(
                t,
                "{:<28} submitted in {:.1} s; rss waiting {:.1} MiB",
                "backlog",
                b.submit_secs,
                mib(b.waiting_rss_bytes)
            );
            if let (Some(stop), Some(start)) = (b.restart_stop_secs, b.restart_start_secs) {
                let _ = writeln!(
                    t,
                    "{:<28} stop {stop:.2} s, start (recovery) {start:.2} s, rss after {:.1} MiB",
                    "restart",
                    mib(b.after_restart_rss_bytes.unwrap_or_default())
                );
            }
            let _ = writeln!(
                t,
                "{:<28} first reply processed {}, first final {}",
                "after restart/resume",
                fmt_secs(b.first_reply_processed_secs),
                fmt_secs(b.first_final_secs)
            );
        }
        if let Some(s) = &self.stop_one {
            let signal = match s.how {
                Restart::Kill => "SIGKILL",
                Restart::Term => "SIGTERM",
            };
            let _ = writeln!(
                t,
                "{:<28} {signal} to {} {:.1} s into the run; its {} partitions had other owners \
                 after {} (exited after {:.2} s)",
                "stopped one",
                s.instance,
                s.after_secs,
                s.partitions,
                fmt_secs(s.handover_secs),
                s.exit_secs
            );
        }
        if self.instances > 1 || self.stop_one.is_some() {
            let _ = writeln!(
                t,
                "{:<28} {} ({} submitted, {} completed, {} unfinished in the database)",
                "every saga finished",
                if self.every_saga_finished() {
                    "yes"
                } else {
                    "NO"
                },
                self.submitted,
                self.completed,
                self.unfinished_sagas
                    .map_or_else(|| "?".to_string(), |n| n.to_string())
            );
        }
        for r in &self.reads {
            let _ = writeln!(
                t,
                "{:<28} p50 {:.2}  p99 {:.2}  max {:.2} ({} reads, {} failed)",
                format!("read {} ms", r.kind),
                r.p50_ms,
                r.p99_ms,
                r.max_ms,
                r.reads,
                r.failed
            );
        }
        let _ = writeln!(t, "{:<28} {}", "load average", self.load_average);
        if self.timed_out {
            let _ = writeln!(t, "TIMED OUT: the figures cover what finished in time");
        }
        t
    }

    /// One line of JSON.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn fmt_secs(s: Option<f64>) -> String {
    s.map_or_else(|| "-".to_string(), |s| format!("{s:.2} s"))
}
