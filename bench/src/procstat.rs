//! CPU and memory of processes, read from /proc (Linux).

use std::time::Instant;

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU ticks of a process (0 if it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// `VmRSS` and `VmHWM` (peak) of a process in bytes.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn pids_named(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| matches(c.trim_end()))
        })
        .collect()
}

/// Busy and total ticks of the whole machine (all cores).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// `VmRSS` and `VmHWM` summed over several processes (`None` for none).
pub fn memory_of(pids: &[u32]) -> Option<(u64, u64)> {
    (!pids.is_empty()).then(|| {
        pids.iter()
            .map(|pid| memory(*pid))
            .fold((0, 0), |(rss, peak), (r, p)| (rss + r, peak + p))
    })
}

/// CPU used by the parts of the system over a measured window.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuUse {
    /// Cores used on average (1.0 = one core busy all the time), by every coordinator process
    /// together.
    pub coordinator: f64,
    pub postgres: f64,
    pub rabbitmq: f64,
    pub bench: f64,
    pub machine: f64,
    /// Coordinator CPU time per measured saga, in milliseconds.
    pub coordinator_ms_per_saga: f64,
}

/// A snapshot at the start of a window.
pub struct CpuWindow {
    /// The coordinator processes with their ticks at the start. One that ends within the window
    /// (`--kill-one-after`) counts for nothing: its ticks cannot be read once it is gone.
    coordinators: Vec<(u32, u64)>,
    started: Instant,
    postgres0: u64,
    rabbit0: u64,
    bench0: u64,
    machine0: (u64, u64),
}

fn postgres_ticks() -> u64 {
    // Backends of every database: other users of the server count too (noted in the report).
    pids_named(|c| c.starts_with("postgres"))
        .into_iter()
        .map(cpu_ticks)
        .sum()
}

fn rabbit_ticks() -> u64 {
    pids_named(|c| c == "beam.smp")
        .into_iter()
        .map(cpu_ticks)
        .sum()
}

impl CpuWindow {
    pub fn start(coordinators: Vec<u32>) -> CpuWindow {
        CpuWindow {
            coordinators: coordinators
                .into_iter()
                .map(|pid| (pid, cpu_ticks(pid)))
                .collect(),
            started: Instant::now(),
            postgres0: postgres_ticks(),
            rabbit0: rabbit_ticks(),
            bench0: cpu_ticks(std::process::id()),
            machine0: machine_ticks(),
        }
    }

    /// CPU used since `start`, for `sagas` measured sagas.
    pub fn finish(&self, sagas: u64) -> CpuUse {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let cores_of = |ticks: u64| ticks as f64 / TICKS_PER_SEC / wall;
        let coordinator_ticks: u64 = self
            .coordinators
            .iter()
            .map(|(pid, ticks0)| cpu_ticks(*pid).saturating_sub(*ticks0))
            .sum();
        let machine = machine_ticks();
        let busy = machine.0.saturating_sub(self.machine0.0) as f64
            / machine.1.saturating_sub(self.machine0.1).max(1) as f64
            * cores();
        CpuUse {
            coordinator: cores_of(coordinator_ticks),
            postgres: cores_of(postgres_ticks().saturating_sub(self.postgres0)),
            rabbitmq: cores_of(rabbit_ticks().saturating_sub(self.rabbit0)),
            bench: cores_of(cpu_ticks(std::process::id()).saturating_sub(self.bench0)),
            machine: busy,
            coordinator_ms_per_saga: coordinator_ticks as f64 / TICKS_PER_SEC * 1e3
                / sagas.max(1) as f64,
        }
    }
}

/// The machine's load averages, as `uptime` shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
