//! A three-node RabbitMQ cluster on this machine, through `scripts/rabbitmq-cluster.sh`, for the
//! tests of broker HA (`tests/cluster.rs`). The nodes run beside the shared broker, which they never
//! touch.
//!
//! [`RabbitCluster::up`] reuses a running cluster (`.ci/run` starts one before the tests) or starts
//! one. A cluster it started is stopped and deleted with the value; a reused one is healed instead
//! (stopped nodes started again), so the next test finds it whole.

use std::time::Duration;

use anyhow::Context;

use crate::process::run_to_completion;

/// The script that runs the cluster.
pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/rabbitmq-cluster.sh"
);

/// Set (to anything but empty) where no cluster can run: the cluster tests then pass without
/// running. `.ci/run` never sets it.
pub const SKIP_VARIABLE: &str = "E2E_SKIP_CLUSTER";

/// Starting three nodes from nothing; measured at 26-35 s on two loaded cores.
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// Stopping or starting one node.
const NODE_TIMEOUT: Duration = Duration::from_secs(300);

/// The cluster of the script, up.
pub struct RabbitCluster {
    /// One AMQP URL per node, node 1 first.
    urls: Vec<String>,
    started_here: bool,
}

impl RabbitCluster {
    /// `true` when [`SKIP_VARIABLE`] says the cluster tests must not run here.
    pub fn skipped() -> bool {
        std::env::var(SKIP_VARIABLE).is_ok_and(|v| !v.is_empty())
    }

    /// The running cluster, or a cluster started now; an error says why none could start.
    pub fn up() -> anyhow::Result<RabbitCluster> {
        let started_here = !script(&["status"], NODE_TIMEOUT)
            .map(|o| o.status.success())
            .unwrap_or(false);
        if started_here {
            let started = script(&["start"], START_TIMEOUT)?;
            anyhow::ensure!(
                started.status.success(),
                "{SCRIPT} start failed ({}):\n{}{}",
                started.status,
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr)
            );
        }
        let mut cluster = RabbitCluster {
            urls: Vec::new(),
            started_here,
        };
        let listed = script(&["urls"], NODE_TIMEOUT)?;
        anyhow::ensure!(listed.status.success(), "{SCRIPT} urls failed");
        cluster.urls = String::from_utf8_lossy(&listed.stdout)
            .trim()
            .split(',')
            .map(str::to_owned)
            .collect();
        anyhow::ensure!(cluster.urls.len() == 3, "three nodes: {:?}", cluster.urls);
        Ok(cluster)
    }

    /// The nodes' URLs in this order of nodes (1, 2, 3), comma-separated: a `SAGA_AMQP_URL`.
    pub fn url_list(&self, nodes: &[usize]) -> String {
        nodes
            .iter()
            .filter_map(|n| self.urls.get(n.wrapping_sub(1)))
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Which node (1, 2, 3) a text naming a URL's `host:port` speaks of, e.g. a log line.
    pub fn node_named_in(&self, text: &str) -> Option<usize> {
        self.urls
            .iter()
            .position(|url| {
                let authority = url.rsplit_once('@').map_or(url.as_str(), |(_, a)| a);
                let host_port = authority.split('/').next().unwrap_or_default();
                text.contains(host_port)
            })
            .map(|i| i + 1)
    }

    /// What the running nodes say about the queues of namespace `ns` (type, leader, messages
    /// ready and unacknowledged, consumers), for a failure's message.
    pub fn describe_queues(&self, ns: &str) -> String {
        let mut out = String::new();
        for n in 1..=3 {
            let args = [
                "ctl",
                &n.to_string(),
                "list_queues",
                "name",
                "type",
                "leader",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ]
            .map(str::to_owned);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match script(&args, NODE_TIMEOUT) {
                Ok(o) if o.status.success() => {
                    let listed = String::from_utf8_lossy(&o.stdout);
                    out.push_str(&format!("queues of {ns} seen from node {n}:\n"));
                    for line in listed.lines().filter(|l| l.contains(ns)) {
                        out.push_str(line);
                        out.push('\n');
                    }
                    return out;
                }
                _ => out.push_str(&format!("node {n} does not answer\n")),
            }
        }
        out
    }

    /// Stops node `n` (gracefully: its connections are closed, its queue replicas go away).
    pub fn stop_node(&self, n: usize) -> anyhow::Result<()> {
        run_ok(&["stop-node", &n.to_string()])
    }

    /// Kills node `n` (SIGKILL: a crash; its clients see their connections reset).
    pub fn kill_node(&self, n: usize) -> anyhow::Result<()> {
        run_ok(&["kill-node", &n.to_string()])
    }

    /// Starts node `n` again; it rejoins the cluster.
    pub fn start_node(&self, n: usize) -> anyhow::Result<()> {
        run_ok(&["start-node", &n.to_string()])
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        let what = if self.started_here { "stop" } else { "start" };
        if let Err(e) = run_ok(&[what]) {
            eprintln!("cluster: {e:#}");
        }
    }
}

fn script(args: &[&str], timeout: Duration) -> anyhow::Result<std::process::Output> {
    run_to_completion(SCRIPT, args, &[], timeout).with_context(|| format!("running {SCRIPT}"))
}

fn run_ok(args: &[&str]) -> anyhow::Result<()> {
    let output = script(args, START_TIMEOUT)?;
    anyhow::ensure!(
        output.status.success(),
        "{SCRIPT} {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
