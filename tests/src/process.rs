//! The real coordinator binary as a child process, for the tests that kill it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Api;

/// The lines `coordinator serve` prints: once `/healthz` and `/readyz` answer (start-up may still be
/// waiting for Postgres), and once start-up is done and every request is served.
pub use coordinator::cli::{LISTENING_PREFIX, STARTING_PREFIX};

/// A `coordinator serve` child process. Dropping it kills it (SIGKILL).
pub struct CoordinatorProcess {
    child: Option<Child>,
    addr: SocketAddr,
    api: Api,
    /// Every line it wrote so far, stdout and stderr.
    output: Arc<Mutex<Vec<String>>>,
}

impl CoordinatorProcess {
    /// Runs `bin serve` (pass `env!("CARGO_BIN_EXE_coordinator-under-test")`) on this database and
    /// namespace and waits until it is started (it serves every request). `extra_env` is added to
    /// (and wins over) the test settings.
    pub fn start(
        bin: &str,
        database_url: &str,
        amqp_url: &str,
        namespace: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<CoordinatorProcess> {
        Self::spawn(
            bin,
            database_url,
            amqp_url,
            namespace,
            extra_env,
            LISTENING_PREFIX,
        )
    }

    /// Like [`CoordinatorProcess::start`], but returns as soon as `/healthz` and `/readyz` answer:
    /// start-up may still be waiting for Postgres.
    pub fn start_listening(
        bin: &str,
        database_url: &str,
        amqp_url: &str,
        namespace: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<CoordinatorProcess> {
        Self::spawn(
            bin,
            database_url,
            amqp_url,
            namespace,
            extra_env,
            STARTING_PREFIX,
        )
    }

    fn spawn(
        bin: &str,
        database_url: &str,
        amqp_url: &str,
        namespace: &str,
        extra_env: &[(&str, &str)],
        wait_for: &'static str,
    ) -> anyhow::Result<CoordinatorProcess> {
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .env("SAGA_DATABASE_URL", database_url)
            .env("SAGA_AMQP_URL", amqp_url)
            .env("SAGA_HTTP_ADDR", "127.0.0.1:0")
            .env("SAGA_NAMESPACE", namespace)
            .env("SAGA_DB_POOL_SIZE", "8")
            .env_remove("SAGA_API_TOKEN")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut token = None;
        for (key, value) in extra_env {
            command.env(key, value);
            if *key == "SAGA_API_TOKEN" {
                token = Some(value.to_string());
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("running {bin} serve"))?;
        let pid = child.id();

        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = child.stderr.take().context("child stderr")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let stdout_lines = Arc::clone(&output);
        std::thread::spawn(move || {
            // Keep draining stdout after the line, or the child blocks on a full pipe.
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[coordinator {pid} stdout] {line}");
                remember(&stdout_lines, &line);
                if let Some(rest) = line.trim().strip_prefix(wait_for) {
                    let addr = rest.trim_end_matches('/').parse::<SocketAddr>();
                    if let (Some(sender), Ok(addr)) = (tx.as_ref(), addr) {
                        let _ = sender.send(addr);
                        tx = None;
                    }
                }
            }
        });
        let stderr_lines = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[coordinator {pid} stderr] {line}");
                remember(&stderr_lines, &line);
            }
        });

        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = child.try_wait()? {
                        anyhow::bail!("the coordinator exited with {status} before listening");
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        anyhow::bail!("the coordinator did not print {wait_for:?} within 120 s");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait()?;
                    anyhow::bail!(
                        "the coordinator closed stdout ({status}) without printing {wait_for:?}"
                    );
                }
            }
        };
        let api = Api::new(&format!("http://{addr}"), token);
        Ok(CoordinatorProcess {
            child: Some(child),
            addr,
            api,
            output,
        })
    }

    /// [`CoordinatorProcess::start`] from async code: the binary `bin` on `db` and `ns`.
    pub async fn start_on(
        bin: &'static str,
        db: &crate::TestDb,
        ns: &crate::TestNamespace,
    ) -> CoordinatorProcess {
        Self::start_on_with(bin, db, ns, Vec::new()).await
    }

    /// [`CoordinatorProcess::start_on`] with `extra_env` as in [`CoordinatorProcess::start`].
    pub async fn start_on_with(
        bin: &'static str,
        db: &crate::TestDb,
        ns: &crate::TestNamespace,
        extra_env: Vec<(&'static str, String)>,
    ) -> CoordinatorProcess {
        let url = db.url().to_string();
        let namespace = ns.name().to_string();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = extra_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            CoordinatorProcess::start(bin, &url, &crate::amqp_url(), &namespace, &env)
        })
        .await
        .expect("join")
        .expect("starting the coordinator process")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every line the process wrote so far (stdout and stderr, in arrival order per stream).
    pub fn output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (a name `kill` knows: `STOP`, `CONT`, `TERM`, ...) to the process. A stopped
    /// (`STOP`) process keeps its sockets open but answers nothing until `CONT`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("the process was already stopped")?;
        send_signal(pid, signal)
    }

    /// SIGTERM, then waits up to `timeout` for the exit status (SIGKILL after that).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM")?;
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit by itself (after a signal sent with
    /// [`CoordinatorProcess::signal`]) and reaps it; SIGKILL after that.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .context("the process was already stopped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the coordinator did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kill -{signal} {pid}`: the crate signals its children with the `kill` command rather than a
/// binding to libc.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .with_context(|| format!("running kill -{signal}"))?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}

fn remember(lines: &Mutex<Vec<String>>, line: &str) {
    lines
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(line.to_owned());
}

/// Runs `bin args...` with these environment variables to completion (e.g. `migrate`).
pub fn run_to_completion(
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<std::process::Output> {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env_remove("SAGA_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().with_context(|| format!("running {bin}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => Ok(output?),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            anyhow::bail!("{bin} {args:?} did not finish within {timeout:?}")
        }
    }
}
