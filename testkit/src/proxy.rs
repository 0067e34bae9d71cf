//! A TCP proxy in front of RabbitMQ or Postgres, to cut the coordinator's connections on demand and
//! stand in for a server that is away ([`TcpProxy::outage`]) without stopping the shared one, or
//! whose answers stop coming back ([`TcpProxy::hold_server_to_client`]).
//!
//! It runs on a thread and runtime of its own, so it keeps forwarding whatever the test thread does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    paused: AtomicBool,
    /// `true` while server→client bytes are held (see [`TcpProxy::hold_server_to_client`]).
    held: watch::Sender<bool>,
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

    /// The server's answers stop coming back: on every connection, open or new, bytes from the
    /// client still reach the server, but bytes from the server wait in the proxy (in order) until
    /// [`TcpProxy::release`]. The client sees a server that takes everything and says nothing (for
    /// AMQP: publishes reach the broker, their confirms and every delivery stay away). A held
    /// connection whose client goes away is closed, so the server sees the client leave.
    pub fn hold_server_to_client(&self) {
        self.state.held.send_replace(true);
    }

    /// Ends [`TcpProxy::hold_server_to_client`]: what was held is delivered, and forwarding goes on.
    pub fn release(&self) {
        self.state.held.send_replace(false);
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
        let held = state.held.subscribe();
        let task = tokio::spawn(async move {
            let _guard = guard;
            let upstream = match TcpStream::connect(&target).await {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("testkit proxy: connecting to {target}: {e}");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            forward(client, upstream, held).await;
        });
        let mut connections = state.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|h| !h.is_finished());
        connections.push(task.abort_handle());
    }
}

/// Forwards both ways as `tokio::io::copy_bidirectional` does (an end of file is passed on as a
/// shutdown, the first error ends both directions), except that server→client bytes wait while
/// `held` is `true`.
async fn forward(client: TcpStream, upstream: TcpStream, mut held: watch::Receiver<bool>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = upstream.into_split();
    // Set once the client stopped sending: a held answer has nobody left to wait for it.
    let (client_done, mut client_gone) = watch::channel(false);
    let client_to_server = async move {
        let copied = tokio::io::copy(&mut from_client, &mut to_server).await;
        client_done.send_replace(true);
        copied?;
        to_server.shutdown().await
    };
    let server_to_client = async move {
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            let n = from_server.read(&mut buf).await?;
            // Checked after the read: bytes that were on their way when the hold began wait too.
            if *held.borrow() {
                tokio::select! {
                    // An error means the proxy is being dropped: nothing is held any more.
                    _ = held.wait_for(|held| !held) => {}
                    _ = client_gone.wait_for(|gone| *gone) => return Ok(()),
                }
            }
            if n == 0 {
                return to_client.shutdown().await;
            }
            to_client.write_all(&buf[..n]).await?;
        }
    };
    let _: std::io::Result<((), ())> = tokio::try_join!(client_to_server, server_to_client);
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
