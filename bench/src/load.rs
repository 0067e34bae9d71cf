//! Offering sagas: the saga submitted, and the closed, open and backlog drivers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::finals::Finals;
use crate::options::Options;

/// The name of the participant that runs step `i`.
pub fn participant(i: usize) -> String {
    format!("bp{i}")
}

/// The submission body: `steps` steps at participants `bp0..`, in sequence or all in parallel.
pub fn saga_body(opts: &Options) -> Value {
    let steps: Vec<Value> = (0..opts.steps.max(1))
        .map(|i| {
            let mut step = json!({
                "name": format!("s{i}"),
                "participant": participant(i),
                "action": "do",
                "compensation": "undo",
                "timeout_ms": opts.step_timeout_ms,
            });
            if opts.parallel {
                step["after"] = json!([]);
            }
            step
        })
        .collect();
    let mut body = json!({"name": "bench", "steps": steps});
    if opts.payload_bytes > 0 {
        body["payload"] = json!({"data": "x".repeat(opts.payload_bytes)});
    }
    body
}

/// What the drivers record, shared so that a run cut short by `--max-secs` still reports.
#[derive(Default)]
pub struct Recorder {
    /// Latencies of measured sagas, in milliseconds.
    pub latencies_ms: Vec<f64>,
    pub submitted: u64,
    pub completed: u64,
    pub failed_submissions: u64,
    /// Start of the measured window (the first measured submission, or the resume in backlog mode).
    pub window_start: Option<Instant>,
    pub last_done: Option<Instant>,
}

pub type Shared = Arc<Mutex<Recorder>>;

fn record(shared: &Shared, f: impl FnOnce(&mut Recorder)) {
    f(&mut shared.lock().unwrap_or_else(|e| e.into_inner()));
}

/// How long a submission is sent again to the next coordinator while none can take it.
const SUBMIT_PATIENCE: Duration = Duration::from_secs(60);

/// Submits sagas over HTTP: to one coordinator, or in turn to each of several.
#[derive(Clone)]
pub struct Submitter {
    client: reqwest::Client,
    /// `{base}/api/v1/sagas` of each coordinator.
    urls: Arc<Vec<String>>,
    /// Which coordinator gets the next submission (round robin), and which are known to be down.
    next: Arc<AtomicUsize>,
    down: Arc<Vec<AtomicBool>>,
    body: Arc<Vec<u8>>,
    /// With several coordinators: a key per submission (`{prefix}{n}`), so that one sent again to
    /// another coordinator after a lost answer is the same saga.
    keys: Option<Arc<(String, AtomicU64)>>,
    /// Submissions sent again to another coordinator.
    pub retries: Arc<AtomicU64>,
}

#[derive(serde::Deserialize)]
struct Created {
    id: Uuid,
}

/// A failed attempt, and whether another coordinator might take it.
struct Failed {
    error: anyhow::Error,
    retry: bool,
}

impl Submitter {
    pub fn new(bases: &[String], opts: &Options) -> anyhow::Result<Submitter> {
        anyhow::ensure!(!bases.is_empty(), "no coordinator to submit to");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(opts.inflight.max(64))
            .timeout(Duration::from_secs(60))
            .build()?;
        let keys = (bases.len() > 1).then(|| {
            let run = &Uuid::new_v4().simple().to_string()[..12];
            Arc::new((format!("bench-{run}-"), AtomicU64::new(0)))
        });
        Ok(Submitter {
            client,
            urls: Arc::new(bases.iter().map(|b| format!("{b}/api/v1/sagas")).collect()),
            next: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(bases.iter().map(|_| AtomicBool::new(false)).collect()),
            body: Arc::new(serde_json::to_vec(&saga_body(opts))?),
            keys,
            retries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Takes coordinator `i` out of the rotation (it was stopped).
    pub fn mark_down(&self, i: usize) {
        if let Some(down) = self.down.get(i) {
            down.store(true, Ordering::SeqCst);
        }
    }

    /// The body of the next submission: the saga, with a key of its own when there are several
    /// coordinators (spliced in, as the body's first member, to spare a serialisation per saga).
    fn next_body(&self) -> Vec<u8> {
        match &self.keys {
            None => self.body.as_ref().clone(),
            Some(keys) => {
                let (prefix, counter) = keys.as_ref();
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let rest = self.body.get(1..).unwrap_or_default();
                let mut body = format!("{{\"key\":\"{prefix}{n}\",").into_bytes();
                body.extend_from_slice(rest);
                body
            }
        }
    }

    /// The next coordinator in turn that is not known to be down.
    fn next_url(&self) -> &str {
        let n = self.urls.len();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            if !self.down[i].load(Ordering::Relaxed) {
                return &self.urls[i];
            }
        }
        &self.urls[0]
    }

    pub async fn submit(&self) -> anyhow::Result<Uuid> {
        let body = self.next_body();
        let started = Instant::now();
        loop {
            match self.attempt(self.next_url(), &body).await {
                Ok(id) => return Ok(id),
                Err(Failed { error, retry }) => {
                    if !retry || self.urls.len() < 2 || started.elapsed() > SUBMIT_PATIENCE {
                        return Err(error);
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn attempt(&self, url: &str, body: &[u8]) -> Result<Uuid, Failed> {
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| Failed {
                error: anyhow::Error::new(e).context(format!("submitting to {url}")),
                retry: true,
            })?;
        let status = response.status();
        // 200: a submission sent again after a lost answer, answered with the saga it made.
        let accepted = status == reqwest::StatusCode::CREATED
            || (self.keys.is_some() && status == reqwest::StatusCode::OK);
        if !accepted {
            let text = response.text().await.unwrap_or_default();
            return Err(Failed {
                error: anyhow::anyhow!("submission to {url} answered {status}: {text}"),
                retry: status.is_server_error(),
            });
        }
        let created = response.json::<Created>().await.map_err(|e| Failed {
            error: anyhow::Error::new(e).context("answer"),
            retry: false,
        })?;
        Ok(created.id)
    }
}

/// Called when the measured window starts.
pub type OnWindow = Arc<dyn Fn() + Send + Sync>;

/// `inflight` loops, each submitting a saga and waiting for its final state before the next.
pub async fn closed(
    opts: &Options,
    submitter: Submitter,
    finals: Arc<Finals>,
    shared: Shared,
    on_window: OnWindow,
) {
    let total = opts.warmup + opts.sagas;
    let warmup = opts.warmup;
    let counter = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for _ in 0..opts.inflight.max(1) {
        let (submitter, finals, shared, counter, on_window) = (
            submitter.clone(),
            Arc::clone(&finals),
            Arc::clone(&shared),
            Arc::clone(&counter),
            Arc::clone(&on_window),
        );
        loops.push(tokio::spawn(async move {
            loop {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    break;
                }
                if n == warmup {
                    on_window();
                    record(&shared, |r| r.window_start = Some(Instant::now()));
                }
                let started = Instant::now();
                one_saga(&submitter, &finals, &shared, started, n >= warmup).await;
            }
        }));
    }
    for l in loops {
        let _ = l.await;
    }
}

/// Submits one saga and waits for its final state, recording its latency from `started`.
async fn one_saga(
    submitter: &Submitter,
    finals: &Finals,
    shared: &Shared,
    started: Instant,
    measured: bool,
) {
    match submitter.submit().await {
        Ok(id) => {
            record(shared, |r| r.submitted += 1);
            if let Ok(done) = finals.wait_for(id).await {
                record(shared, |r| {
                    r.completed += 1;
                    r.last_done = Some(r.last_done.map_or(done, |l| l.max(done)));
                    if measured {
                        r.latencies_ms
                            .push(done.saturating_duration_since(started).as_secs_f64() * 1e3);
                    }
                });
            }
        }
        Err(e) => {
            eprintln!("bench: {e:#}");
            record(shared, |r| r.failed_submissions += 1);
        }
    }
}

/// Submissions at a fixed rate, each on its own task; latency counts from the intended start, so a
/// coordinator that falls behind is not flattered (no coordinated omission).
pub async fn open(
    opts: &Options,
    submitter: Submitter,
    finals: Arc<Finals>,
    shared: Shared,
    on_window: OnWindow,
) {
    let total = opts.warmup + opts.sagas;
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        if n == opts.warmup {
            on_window();
            record(&shared, |r| r.window_start = Some(due.into_std()));
        }
        let (submitter, finals, shared) =
            (submitter.clone(), Arc::clone(&finals), Arc::clone(&shared));
        let measured = n >= opts.warmup;
        tasks.push(tokio::spawn(async move {
            one_saga(&submitter, &finals, &shared, due.into_std(), measured).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Submits every saga (`inflight` submissions at a time) while the participants are paused, and
/// answers one waiter per saga.
pub async fn submit_backlog(
    opts: &Options,
    submitter: Submitter,
    finals: Arc<Finals>,
    shared: Shared,
) -> Vec<tokio::task::JoinHandle<()>> {
    let counter = Arc::new(AtomicU64::new(0));
    let waiters = Arc::new(Mutex::new(Vec::new()));
    let mut loops = Vec::new();
    for _ in 0..opts.inflight.max(1) {
        let (submitter, finals, shared, counter, waiters) = (
            submitter.clone(),
            Arc::clone(&finals),
            Arc::clone(&shared),
            Arc::clone(&counter),
            Arc::clone(&waiters),
        );
        let total = opts.sagas;
        loops.push(tokio::spawn(async move {
            while counter.fetch_add(1, Ordering::SeqCst) < total {
                match submitter.submit().await {
                    Ok(id) => {
                        record(&shared, |r| r.submitted += 1);
                        let done = finals.wait_for(id);
                        let shared = Arc::clone(&shared);
                        let waiter = tokio::spawn(async move {
                            if let Ok(done) = done.await {
                                record(&shared, |r| {
                                    r.completed += 1;
                                    r.last_done = Some(r.last_done.map_or(done, |l| l.max(done)));
                                    // Latency from the resume: the time a waiting saga took once
                                    // its participants answered.
                                    if let Some(start) = r.window_start {
                                        r.latencies_ms.push(
                                            done.saturating_duration_since(start).as_secs_f64()
                                                * 1e3,
                                        );
                                    }
                                });
                            }
                        });
                        waiters
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(waiter);
                    }
                    Err(e) => {
                        eprintln!("bench: {e:#}");
                        record(&shared, |r| r.failed_submissions += 1);
                    }
                }
            }
        }));
    }
    for l in loops {
        let _ = l.await;
    }
    let taken = std::mem::take(&mut *waiters.lock().unwrap_or_else(|e| e.into_inner()));
    taken
}
