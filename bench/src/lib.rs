//! Benchmark of the saga coordinator (see `docs/benchmark.md`).
//!
//! The coordinator runs as a separate process (so its CPU and memory can be read from /proc), with a
//! database and an AMQP namespace of its own; with `--instances N`, N of them share those, sagas are
//! submitted to each in turn, and one can be stopped mid-run (`handover`). In-process participants answer every command at once;
//! sagas are submitted over the HTTP API; a trigger in the coordinator's database notifies the bench
//! when a saga's final state commits, which ends its latency. Postgres commits are counted from
//! `pg_stat_database.xact_commit` of the coordinator's database.

pub mod finals;
pub mod handover;
pub mod load;
pub mod options;
pub mod participants;
pub mod procstat;
pub mod reads;
pub mod report;
pub mod seed;
pub mod target;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use std::future::Future;

use finals::Finals;
use load::{Recorder, Shared, Submitter};
use options::{Mode, Options};
use participants::Participants;
use procstat::CpuWindow;
use report::{BacklogFigures, Report, StopOneFigures};
use target::Target;

/// How long one step around the measured run (connecting, declaring, reading a count, closing) may
/// take: each is a round trip or two, and one that hangs must end the run with its name, not stall it.
const STEP_LIMIT: Duration = Duration::from_secs(60);

/// `step` awaited for at most `limit`; an error naming `what` if it takes longer.
async fn within<T>(
    what: &str,
    limit: Duration,
    step: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| anyhow::anyhow!("{what} took more than {} s", limit.as_secs()))
}

/// Runs one benchmark as the options say and reports it.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    opts.check()?;
    let setup = opts.clone();
    let target = tokio::task::spawn_blocking(move || Target::prepare(&setup))
        .await
        .context("starting the coordinator")??;
    let names: Vec<String> = (0..opts.steps.max(1)).map(load::participant).collect();
    measure(&opts, target, names).await
}

async fn measure(opts: &Options, target: Target, names: Vec<String>) -> anyhow::Result<Report> {
    let declared = Participants::declare(
        &target.amqp_url,
        &target.namespace,
        names.clone(),
        "s0".into(),
        opts.participant_prefetch,
    );
    let finals = Arc::new(Finals::default());
    let ready = async {
        let participants = within("declaring the participants", STEP_LIMIT, declared).await??;
        let listening = target.listen(Arc::clone(&finals));
        let listener = within("listening for final states", STEP_LIMIT, listening).await??;
        anyhow::Ok((participants, listener))
    }
    .await;
    let (mut participants, listener) = match ready {
        Ok(ready) => ready,
        Err(e) => {
            target.cleanup(&names).await;
            return Err(e);
        }
    };
    let target = Arc::new(Mutex::new(target));
    let outcome = drive(opts, &target, &mut participants, &finals).await;
    drop(listener);
    // Cleaning up is best effort: a step that hangs is reported and passed over.
    if within("closing the participants", STEP_LIMIT, participants.close())
        .await
        .is_err()
    {
        eprintln!("bench: closing the participants' connection did not finish; going on");
    }
    let target = match Arc::try_unwrap(target) {
        Ok(t) => t.into_inner().unwrap_or_else(|e| e.into_inner()),
        Err(_) => anyhow::bail!("the coordinator handle is still in use"),
    };
    target.cleanup(&names).await;
    outcome
}

fn lock(target: &Mutex<Target>) -> std::sync::MutexGuard<'_, Target> {
    target.lock().unwrap_or_else(|e| e.into_inner())
}

async fn commits(target: &Arc<Mutex<Target>>) -> anyhow::Result<i64> {
    let target = Arc::clone(target);
    let read = tokio::task::spawn_blocking(move || lock(&target).commits());
    within("reading the commit count", STEP_LIMIT, read).await??
}

async fn unfinished(target: &Arc<Mutex<Target>>) -> anyhow::Result<i64> {
    let target = Arc::clone(target);
    let read = tokio::task::spawn_blocking(move || lock(&target).unfinished());
    within("counting unfinished sagas", STEP_LIMIT, read).await??
}

/// Keys of existing sagas for the read probe (a seeded database has many; a fresh one none).
async fn sample_keys(target: &Arc<Mutex<Target>>) -> Vec<String> {
    let target = Arc::clone(target);
    let read = tokio::task::spawn_blocking(move || lock(&target).sample_keys(200));
    match within("sampling saga keys", STEP_LIMIT, read).await {
        Ok(Ok(Ok(keys))) => keys,
        Ok(Ok(Err(e))) => {
            eprintln!("bench: sampling saga keys: {e:#}");
            Vec::new()
        }
        Ok(Err(e)) => {
            eprintln!("bench: sampling saga keys: {e}");
            Vec::new()
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            Vec::new()
        }
    }
}

/// The stopper of `--kill-one-after`/`--term-one-after` after the run: its figures if it stopped
/// one (waiting for the handover), nothing if the run ended first.
async fn stopped_one(
    stopper: Option<(
        tokio::task::JoinHandle<anyhow::Result<StopOneFigures>>,
        Arc<AtomicBool>,
    )>,
) -> Option<StopOneFigures> {
    let (task, begun) = stopper?;
    if !begun.load(Ordering::SeqCst) {
        task.abort();
        eprintln!("bench: the run ended before a coordinator was to be stopped");
        return None;
    }
    match task.await {
        Ok(Ok(figures)) => Some(figures),
        Ok(Err(e)) => {
            eprintln!("bench: stopping one coordinator: {e:#}");
            None
        }
        Err(e) => {
            eprintln!("bench: the stopper failed: {e}");
            None
        }
    }
}

async fn drive(
    opts: &Options,
    target: &Arc<Mutex<Target>>,
    participants: &mut Participants,
    finals: &Arc<Finals>,
) -> anyhow::Result<Report> {
    let (urls, pids) = {
        let t = lock(target);
        (t.urls(), t.pids())
    };
    let submitter = Submitter::new(&urls, opts)?;
    let retries = Arc::clone(&submitter.retries);
    let shared: Shared = Arc::new(Mutex::new(Recorder::default()));
    tokio::time::sleep(Duration::from_millis(opts.stats_settle_ms)).await;
    let commits_before = commits(target).await?;
    let deadline = Duration::from_secs(opts.max_secs);
    let started = Instant::now();
    let cpu: Arc<Mutex<Option<CpuWindow>>> = Arc::new(Mutex::new(None));
    let on_window: load::OnWindow = {
        let cpu = Arc::clone(&cpu);
        Arc::new(move || {
            *cpu.lock().unwrap_or_else(|e| e.into_inner()) = Some(CpuWindow::start(pids.clone()));
        })
    };
    let mut backlog = None;
    let mut stop_one = None;
    let mut read_figures = Vec::new();
    let timed_out = match opts.mode {
        Mode::Closed | Mode::Open => {
            within(
                "starting the participants",
                STEP_LIMIT,
                participants.resume(),
            )
            .await??;
            let stopper = opts.stop_one().map(|(how, secs)| {
                let begun = Arc::new(AtomicBool::new(false));
                let task = tokio::spawn(handover::stop_one(
                    Arc::clone(target),
                    submitter.clone(),
                    how,
                    Duration::from_secs_f64(secs.max(0.0)),
                    Arc::clone(&begun),
                ));
                (task, begun)
            });
            let (stop_reads, reads_stopped) = tokio::sync::watch::channel(false);
            let reads = if opts.probe_reads {
                let keys = sample_keys(target).await;
                Some(tokio::spawn(reads::probe(
                    urls[0].clone(),
                    Arc::new(keys),
                    Duration::from_millis(opts.probe_every_ms),
                    reads_stopped,
                )))
            } else {
                None
            };
            let work = async {
                if opts.mode == Mode::Closed {
                    load::closed(
                        opts,
                        submitter,
                        Arc::clone(finals),
                        Arc::clone(&shared),
                        on_window,
                    )
                    .await
                } else {
                    load::open(
                        opts,
                        submitter,
                        Arc::clone(finals),
                        Arc::clone(&shared),
                        on_window,
                    )
                    .await
                }
            };
            let timed_out = tokio::time::timeout(deadline, work).await.is_err();
            let _ = stop_reads.send(true);
            if let Some(task) = reads {
                read_figures = within("stopping the read probe", STEP_LIMIT, task)
                    .await?
                    .unwrap_or_default();
            }
            stop_one = stopped_one(stopper).await;
            timed_out
        }
        Mode::Backlog => {
            let mut figures = BacklogFigures::default();
            let submitting = Instant::now();
            let submitted = tokio::time::timeout(
                deadline,
                load::submit_backlog(opts, submitter, Arc::clone(finals), Arc::clone(&shared)),
            )
            .await;
            figures.submit_secs = submitting.elapsed().as_secs_f64();
            // Let the commands reach their queues before anything is measured.
            tokio::time::sleep(Duration::from_secs(2)).await;
            if let Some((rss, peak)) = procstat::memory_of(&lock(target).pids()) {
                figures.waiting_rss_bytes = rss;
                figures.waiting_peak_rss_bytes = peak;
            }
            let resumed_from = if let Some(how) = opts.restart {
                let t = Arc::clone(target);
                let restart_at = Instant::now();
                let (stopped, started) =
                    tokio::task::spawn_blocking(move || lock(&t).restart(how)).await??;
                figures.restart_stop_secs = Some(stopped.as_secs_f64());
                figures.restart_start_secs = Some(started.as_secs_f64());
                if let Some((rss, _)) = procstat::memory_of(&lock(target).pids()) {
                    figures.after_restart_rss_bytes = Some(rss);
                }
                restart_at
            } else {
                Instant::now()
            };
            let pids = lock(target).pids();
            *cpu.lock().unwrap_or_else(|e| e.into_inner()) = Some(CpuWindow::start(pids.clone()));
            let resume_at = Instant::now();
            shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .window_start = Some(resume_at);
            within(
                "starting the participants",
                STEP_LIMIT,
                participants.resume(),
            )
            .await??;
            let left = deadline.saturating_sub(started.elapsed());
            let drained = match submitted {
                Ok(waiters) => tokio::time::timeout(left, async {
                    for w in waiters {
                        let _ = w.await;
                    }
                })
                .await
                .is_ok(),
                Err(_) => false,
            };
            figures.first_final_secs = finals
                .first()
                .map(|f| f.saturating_duration_since(resumed_from).as_secs_f64());
            figures.first_reply_processed_secs = participants
                .activity
                .first_followup
                .get()
                .map(|f| f.saturating_duration_since(resumed_from).as_secs_f64());
            if let Some((_, peak)) = procstat::memory_of(&pids) {
                figures.final_peak_rss_bytes = peak;
            }
            backlog = Some(figures);
            !drained
        }
    };
    let cpu_use = cpu
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .map(|w| {
            let measured = shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .latencies_ms
                .len() as u64;
            w.finish(measured)
        })
        .unwrap_or_default();
    let memory = procstat::memory_of(&lock(target).pids());
    tokio::time::sleep(Duration::from_millis(opts.stats_settle_ms)).await;
    let commits_after = commits(target).await?;
    let recorder = std::mem::take(&mut *shared.lock().unwrap_or_else(|e| e.into_inner()));
    let mut report = Report::new(
        opts,
        recorder,
        commits_after - commits_before,
        cpu_use,
        memory,
        backlog,
        timed_out,
    );
    report.submission_retries = retries.load(Ordering::Relaxed);
    report.stop_one = stop_one;
    report.reads = read_figures;
    report.unfinished_sagas = unfinished(target)
        .await
        .inspect_err(|e| eprintln!("bench: counting unfinished sagas: {e:#}"))
        .ok();
    Ok(report)
}
