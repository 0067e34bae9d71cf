//! Stopping one of several coordinators mid-run (`--kill-one-after`, `--term-one-after`) and timing
//! the handover of its partitions to the others, read from `partition_leases`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::load::Submitter;
use crate::options::Restart;
use crate::report::StopOneFigures;
use crate::target::{wait_handover, Target};

/// How long the handover is waited for before it is reported as not seen.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// After `after`, stops the last coordinator (`how`), takes it out of `submitter`'s rotation and
/// waits until its partitions have other owners and it has exited. `begun` is set once the time
/// came: a run that ends before then was not disturbed.
pub async fn stop_one(
    target: Arc<Mutex<Target>>,
    submitter: Submitter,
    how: Restart,
    after: Duration,
    begun: Arc<AtomicBool>,
) -> anyhow::Result<StopOneFigures> {
    tokio::time::sleep(after).await;
    begun.store(true, Ordering::SeqCst);
    let (i, id, held, database_url, mut child) = tokio::task::spawn_blocking(move || {
        let mut t = target.lock().unwrap_or_else(|e| e.into_inner());
        let i = t.instances.len().saturating_sub(1);
        let id = t.instances.get(i).map(|s| s.id.clone()).unwrap_or_default();
        // Read just before the signal: what it holds is what must move.
        let held = t.partitions_of(&id)?;
        let (id, child) = t
            .take_process(i)
            .context("no coordinator process to stop")?;
        anyhow::Ok((i, id, held, t.database_url.clone(), child))
    })
    .await??;
    let signalled = Instant::now();
    match how {
        Restart::Kill => child.kill().context("SIGKILL")?,
        Restart::Term => {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .context("running kill -TERM")?;
            anyhow::ensure!(status.success(), "kill -TERM failed: {status}");
        }
    }
    submitter.mark_down(i);
    let exited = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        signalled.elapsed()
    });
    let handover = {
        let (id, held) = (id.clone(), held.clone());
        tokio::task::spawn_blocking(move || {
            wait_handover(&database_url, &id, &held, signalled, HANDOVER_TIMEOUT)
        })
    };
    let (exited, handover) = tokio::join!(exited, handover);
    Ok(StopOneFigures {
        how,
        instance: id,
        after_secs: after.as_secs_f64(),
        partitions: held.len(),
        handover_secs: handover??.map(|d| d.as_secs_f64()),
        exit_secs: exited?.as_secs_f64(),
    })
}
