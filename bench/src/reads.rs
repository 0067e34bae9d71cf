//! `--probe-reads`: while the load runs, one operator reads what a person would at the dashboard
//! and in a search (issue 15's scale target), one read at a time, and the latency of each kind is
//! reported. Reads that fail are counted, not timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::watch;

/// One kind of read and its figures over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ReadFigures {
    pub kind: &'static str,
    pub reads: u64,
    /// Answers other than 2xx, and reads that got no answer.
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The reads, in the order they are made, over and over.
const KINDS: [&str; 5] = [
    "overview",
    "in_flight",
    "by_key",
    "by_name_and_state",
    "by_error_in_range",
];

/// The path and query of a read of `kind`; `key` is an existing saga's key (a seeded one) when
/// there is one.
fn path_of(kind: &str, key: &str) -> String {
    let ago = |days: i64| {
        (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    match kind {
        "overview" => "/dashboard/api/overview".to_owned(),
        "in_flight" => "/api/v1/sagas?state=running&state=compensating&limit=50".to_owned(),
        "by_key" => format!("/api/v1/sagas?key={key}"),
        "by_name_and_state" => "/api/v1/sagas?name=place-order&state=committed&limit=50".to_owned(),
        _ => format!(
            "/api/v1/sagas?error=declined&created_after={}&created_before={}&limit=50",
            ago(60),
            ago(30)
        ),
    }
}

/// Reads from `base` in turn, a pause of `every` between two, until `stop` turns true; answers
/// the figures of each kind.
pub async fn probe(
    base: String,
    keys: Arc<Vec<String>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Vec<ReadFigures> {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: the read probe has no HTTP client: {e}");
            return Vec::new();
        }
    };
    let mut timed: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    let mut failed = vec![0u64; KINDS.len()];
    let mut n = 0usize;
    while !*stop.borrow() {
        let i = n % KINDS.len();
        let key = keys
            .get(n / KINDS.len() % keys.len().max(1))
            .map_or("order-1", |k| k);
        let url = format!("{base}{}", path_of(KINDS[i], key));
        let started = Instant::now();
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(_) => timed[i].push(started.elapsed().as_secs_f64() * 1000.0),
                Err(_) => failed[i] += 1,
            },
            Ok(r) => {
                if failed[i] == 0 {
                    eprintln!("bench: read {} answered {}", KINDS[i], r.status());
                }
                failed[i] += 1;
            }
            Err(e) => {
                if failed[i] == 0 {
                    eprintln!("bench: read {} failed: {e}", KINDS[i]);
                }
                failed[i] += 1;
            }
        }
        n += 1;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
    KINDS
        .iter()
        .zip(timed)
        .zip(failed)
        .map(|((kind, mut ms), failed)| {
            ms.sort_by(f64::total_cmp);
            ReadFigures {
                kind,
                reads: ms.len() as u64,
                failed,
                p50_ms: crate::report::percentile(&ms, 50.0),
                p99_ms: crate::report::percentile(&ms, 99.0),
                max_ms: crate::report::percentile(&ms, 100.0),
            }
        })
        .collect()
}
