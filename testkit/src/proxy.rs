//! A TCP proxy in front of RabbitMQ or Postgres, to cut the coordinator's connections on demand and
//! stand in for a server that is away ([`TcpProxy::outage`]) without stopping the shared one.
//!
//! It runs on a thread and runtime of its own, so it keeps forwarding whatever the test thread does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    paused: AtomicBool,
    accepted: AtomicUsize,
    active: AtomicUsize,
    severed: AtomicUsize,
    connections: Mutex<Vec<AbortHandle>>,
}

/// Decrements the live-connection count when a forwarding task ends, however it ends.
struct ActiveGuard(Arc<State>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct TcpProxy {
    addr: SocketAddr,
    target: String,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    /// A proxy on `127.0.0.1:0` to the test broker.
    pub fn to_rabbitmq() -> TcpProxy {
        Self::start(&crate::amqp_host_port()).expect("starting the TCP proxy")
    }

    /// A proxy on `127.0.0.1:0` to the test Postgres server.
    pub fn to_postgres() -> TcpProxy {
        Self::start(&crate::pg_host_port()).expect("starting the TCP proxy")
    }

    /// A proxy on `127.0.0.1:0` to `target` (`host:port`).
    pub fn start(target: &str) -> anyhow::Result<TcpProxy> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(State::default());
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let thread_state = state.clone();
        let thread_target = target.to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("testkit-proxy")
            .build()
            .context("building the proxy runtime")?;
        let thread = std::thread::Builder::new()
            .name("testkit-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("testkit proxy: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = shutdown_rx => {}
                        _ = accept_loop(listener, thread_target, thread_state) => {}
                    }
                });
                // Dropping the runtime cancels every forwarding task: all connections close.
                drop(runtime);
            })?;
        Ok(TcpProxy {
            addr,
            target: target.to_string(),
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// An AMQP URL that goes through this proxy (guest/guest, vhost `/`).
    pub fn amqp_url(&self) -> String {
        let url = crate::amqp_url();
        let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url.as_str()));
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (format!("{u}@"), r),
            None => (String::new(), rest),
        };
        let path = rest.find('/').map_or("/%2f", |i| &rest[i..]);
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }

    /// A Postgres URL of database `name` that goes through this proxy (the test server's user).
    pub fn postgres_url(&self, name: &str) -> String {
        let server = crate::pg_server_url();
        let (scheme, rest) = server
            .split_once("://")
            .unwrap_or(("postgres", server.as_str()));
        let userinfo = rest
            .rsplit_once('@')
            .map_or(String::new(), |(u, _)| format!("{u}@"));
        format!("{scheme}://{userinfo}{}/{name}", self.addr)
    }

    /// The server "goes away": every connection is cut and new ones are refused (accepted and
    /// closed at once) until [`TcpProxy::resume`]. Returns how many were cut.
    pub fn outage(&self) -> usize {
        self.pause();
        self.sever()
    }

    /// Closes every connection open right now; new ones are still accepted (unless paused).
    /// Returns how many were cut.
    pub fn sever(&self) -> usize {
        let handles: Vec<AbortHandle> = std::mem::take(
            &mut *self
                .state
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let n = handles.iter().filter(|h| !h.is_finished()).count();
        for handle in handles {
            handle.abort();
        }
        self.state.severed.fetch_add(n, Ordering::SeqCst);
        n
    }

    /// Refuses new connections (accepts and closes them at once) until [`TcpProxy::resume`].
    pub fn pause(&self) {
        self.state.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.state.paused.store(false, Ordering::SeqCst);
    }

    /// Connections accepted and forwarded since the start.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections being forwarded right now.
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Connections cut by [`TcpProxy::sever`] so far.
    pub fn severed(&self) -> usize {
        self.state.severed.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, target: String, state: Arc<State>) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("testkit proxy: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if state.paused.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        state.accepted.fetch_add(1, Ordering::SeqCst);
        state.active.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard(state.clone());
        let target = target.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            let mut client = client;
            let mut upstream = match TcpStream::connect(&target).await {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("testkit proxy: connecting to {target}: {e}");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        let mut connections = state.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|h| !h.is_finished());
        connections.push(task.abort_handle());
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
