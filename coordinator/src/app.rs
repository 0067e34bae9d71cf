//! Wiring: starts every part of the coordinator in the right order and stops them in reverse.
//!
//! Start-up order matters for correctness: migrations, then the writer, then recovery of every
//! unfinished saga (actors exist before any reply is routed), then the broker, the relay and the
//! HTTP server. Shutdown stops taking requests first and lets the writer finish what is queued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use actix::Arbiter;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use crate::amqp::{self, AmqpSettings, Inbound, InboundDelivery};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::runtime::changes::Changes;
use crate::runtime::{relay, Registry};
use crate::saga::machine::Event;
use crate::store::{self, Store, Writer};
use crate::web::state::AppState;

/// Runs the coordinator until the HTTP server stops (SIGTERM/SIGINT for the binary, or
/// [`Coordinator::stop`]). `on_listening` learns the bound address once requests are accepted.
pub async fn run(
    settings: Settings,
    handle_signals: bool,
    on_listening: impl FnOnce(SocketAddr, actix_web::dev::ServerHandle),
) -> anyhow::Result<()> {
    let url = settings.database_url.clone();
    tokio::task::spawn_blocking(move || store::migrate(&url))
        .await
        .context("migration task failed")?
        .context("cannot prepare the database")?;
    let pool = store::pool(&settings.database_url, settings.db_pool_size)?;
    let store = Store::new(pool.clone());
    let writers = settings.writer_threads.clamp(1, 64);
    let writer_pool = store::writer_pool(&settings.database_url, writers as u32)?;
    let metrics = Arc::new(Metrics::new());
    let (writer, writer_threads) = Writer::start(writer_pool, writers, Arc::clone(&metrics));

    let (relay_tx, relay_rx) = mpsc::unbounded_channel();
    let arbiters: Vec<Arbiter> = (0..settings.actor_threads)
        .map(|_| Arbiter::new())
        .collect();
    // With no threads of their own, actors run on this thread, beside the AMQP consumer and the
    // outbox relay: a reply then reaches its saga without waking another thread.
    let actor_arbiters = if arbiters.is_empty() {
        vec![Arbiter::current()]
    } else {
        arbiters.iter().map(|a| a.handle()).collect()
    };
    let changes = Changes::default();
    let registry = Registry::new(
        actor_arbiters,
        writer.clone(),
        store.clone(),
        relay_tx,
        changes.clone(),
        Arc::clone(&metrics),
    );

    let unfinished = store
        .interact(|db| db.load_unfinished())
        .await
        .context("cannot load the unfinished sagas")?;
    log::info!("resuming {} unfinished saga(s)", unfinished.len());
    for saga in unfinished {
        registry.adopt(saga);
    }

    let (outbound_tx, outbound_rx) = mpsc::unbounded_channel();
    let (published_tx, published_rx) = mpsc::unbounded_channel();
    let (inbound_tx, inbound_rx) = mpsc::channel(usize::from(settings.amqp_prefetch.max(16)) * 2);
    let amqp_settings = AmqpSettings {
        url: settings.amqp_url.clone(),
        namespace: settings.namespace.clone(),
        prefetch: settings.amqp_prefetch,
    };
    let dead_letters = amqp::dead_letters::DeadLetterBrowser::new(amqp_settings.clone());
    let broker = amqp::start(amqp_settings, outbound_rx, published_tx, inbound_tx);
    // The relay holds the last handle to the writer besides the actors'.
    let relay = relay::spawn(
        store.clone(),
        writer,
        relay_rx,
        outbound_tx,
        published_rx,
        Arc::clone(&metrics),
    );
    let dispatcher = actix_rt::spawn(dispatch_inbound(inbound_rx, registry.clone()));

    let state = web::Data::new(AppState {
        registry: registry.clone(),
        store,
        changes: changes.clone(),
        metrics,
        amqp_connected: broker.connected(),
        dead_letter_depth: broker.dead_letters(),
        api_token: settings.api_token.clone().filter(|t| !t.is_empty()),
        max_body_bytes: settings.max_body_bytes,
        dead_letters,
    });
    let mut server = HttpServer::new(move || {
        App::new().configure(|cfg| crate::web::configure(cfg, state.clone()))
    })
    .shutdown_timeout(settings.shutdown_grace().as_secs());
    if !handle_signals {
        server = server.disable_signals();
    }
    let server = server
        .bind(&settings.http_addr)
        .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("the HTTP server has no address")?;
    let server = server.run();
    if handle_signals {
        // actix stops the server on these signals; open event streams must end for it to finish.
        actix_rt::spawn(async move {
            wait_for_stop_signal().await;
            changes.close();
        });
    }
    on_listening(addr, server.handle());
    let served = server.await;

    log::info!("stopping: no new requests; finishing in-flight work");
    broker.shutdown().await;
    dispatcher.abort();
    // Actors on the main arbiter live as long as the process unless told to stop.
    registry.stop_actors();
    for arbiter in &arbiters {
        arbiter.stop();
    }
    for arbiter in arbiters {
        let _ = tokio::task::spawn_blocking(move || arbiter.join()).await;
    }
    relay.abort();
    drop(registry);
    // The writer threads end once every handle is gone and their queue is empty.
    let _ = tokio::task::spawn_blocking(move || {
        for t in writer_threads {
            let _ = t.join();
        }
    })
    .await;
    served.context("the HTTP server failed")
}

/// SIGTERM or SIGINT (the signals actix's server stops on).
async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Routes replies and dead-lettered commands to their sagas, concurrently.
async fn dispatch_inbound(mut inbound: mpsc::Receiver<InboundDelivery>, registry: Registry) {
    while let Some(delivery) = inbound.recv().await {
        let (saga_id, event) = match delivery.message {
            Inbound::Reply(reply) => (reply.saga_id, Event::Reply(reply.into())),
            Inbound::DeadLettered {
                saga_id,
                step,
                kind,
                attempt,
            } => (
                saga_id,
                Event::DeadLettered {
                    step,
                    kind: kind.into(),
                    attempt,
                },
            ),
        };
        let registry = registry.clone();
        actix_rt::spawn(async move { registry.deliver(saga_id, event, delivery.settle).await });
    }
}

/// A coordinator running on its own thread: for tests, benchmarks and embedding.
pub struct Coordinator {
    addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    thread: Option<thread::JoinHandle<anyhow::Result<()>>>,
}

impl Coordinator {
    /// Starts the coordinator and returns once it accepts HTTP requests.
    pub fn start(settings: Settings) -> anyhow::Result<Coordinator> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("coordinator".into())
            .spawn(move || {
                actix_rt::System::new().block_on(run(settings, false, move |addr, handle| {
                    let _ = ready_tx.send((addr, handle));
                }))
            })?;
        match ready_rx.blocking_recv() {
            Ok((addr, server)) => Ok(Coordinator {
                addr,
                server,
                thread: Some(thread),
            }),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("the coordinator stopped while starting")),
            },
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful stop: no new requests, in-flight writes finish. Blocks until done.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let server = self.server.clone();
            // The server handle needs an async context; a small runtime of our own is enough.
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(server.stop(true));
            }
            match thread.join() {
                Ok(Err(e)) => log::error!("the coordinator stopped with an error: {e:#}"),
                Err(_) => log::error!("the coordinator thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.shutdown();
    }
}
