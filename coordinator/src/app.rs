//! Wiring: starts every part of the coordinator in the right order and stops them in reverse.
//!
//! The HTTP server listens first, so that `/healthz` and `/readyz` answer while start-up waits for
//! Postgres (other requests get 503 until it is done). Then the order matters for correctness:
//! migrations, then the writer, then recovery of every unfinished saga (actors exist before any
//! reply is routed), then the broker and the relay; only then do the API's handlers run. Shutdown
//! stops taking requests first and lets the writer finish what is queued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use actix::Arbiter;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::amqp::{self, AmqpSettings, BrokerHandle, Inbound, InboundDelivery};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::runtime::alerts::{self, AlertSettings};
use crate::runtime::change_feed::{self, ChangeFeed};
use crate::runtime::changes::Changes;
use crate::runtime::keeper::{Keeper, KeeperSettings};
use crate::runtime::ownership::Ownership;
use crate::runtime::retention::{self, RetentionPolicy};
use crate::runtime::sending::Sendings;
use crate::runtime::{bulk_actions, name_pauses, relay, state_counts, Registry};
use crate::saga::machine::Event;
use crate::store::{self, Store, Writer};
use crate::submission::CheckBackHosts;
use crate::web::state::{AppState, Running};

/// Runs the coordinator until the HTTP server stops (SIGTERM/SIGINT for the binary, or
/// [`Coordinator::stop`]). `on_listening` learns the bound address as soon as `/healthz` and
/// `/readyz` answer; `on_started` is called once start-up is done and every request is served.
pub async fn run(
    settings: Settings,
    handle_signals: bool,
    on_listening: impl FnOnce(SocketAddr, actix_web::dev::ServerHandle),
    on_started: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let changes = Changes::default();
    let amqp_settings = AmqpSettings {
        url: settings.amqp_url.clone(),
        namespace: settings.namespace.clone(),
        queue_type: settings.queue_type,
        prefetch: settings.amqp_prefetch,
        // Read from the database at start-up.
        partitions: Default::default(),
        instance: settings.instance(),
    };
    let mut state = AppState::starting(
        changes.clone(),
        Arc::clone(&metrics),
        settings.token().map(str::to_owned),
        settings.max_body_bytes,
        amqp::dead_letters::DeadLetterBrowser::new(amqp_settings.clone()),
    );
    state.check_back_hosts =
        CheckBackHosts::parse(&settings.check_back_hosts).map_err(anyhow::Error::msg)?;
    state.trace_url_template = settings.trace_url_template.clone();
    // Refused before anything listens: an alert setting without its secret is a mistake.
    let alert_settings = AlertSettings::from_settings(&settings).map_err(anyhow::Error::msg)?;
    let state = web::Data::new(state);
    let app_state = state.clone();
    let mut server = HttpServer::new(move || {
        App::new().configure(|cfg| crate::web::configure(cfg, app_state.clone()))
    })
    .shutdown_timeout(settings.shutdown_grace().as_secs());
    if !handle_signals {
        server = server.disable_signals();
    }
    let server = server
        .bind(&settings.http_addr)
        .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
    // Checked on the bound addresses (a name such as `localhost` resolved), before serving any.
    if let Some(refusal) = settings.open_api_refusal(&server.addrs()) {
        anyhow::bail!(refusal);
    }
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("the HTTP server has no address")?;
    let server = server.run();
    let server_handle = server.handle();
    if handle_signals {
        // actix stops the server on these signals; open event streams must end for it to finish.
        let changes = changes.clone();
        actix_rt::spawn(async move {
            wait_for_stop_signal().await;
            changes.close();
        });
    }
    let mut served = actix_rt::spawn(server);
    on_listening(addr, server_handle.clone());

    let advertise = settings
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let started = tokio::select! {
        started = start(&settings, &state, amqp_settings, alert_settings, metrics, changes, advertise) => started,
        // Stopped while starting (e.g. SIGTERM while waiting for Postgres): nothing to wind down.
        served = &mut served => {
            log::info!("stopped before start-up was done");
            return served.context("the HTTP server task failed")?.context("the HTTP server failed");
        }
    };
    let parts = match started {
        Ok(parts) => parts,
        Err(e) => {
            server_handle.stop(false).await;
            let _ = served.await;
            return Err(e);
        }
    };
    on_started(addr);
    let served = served.await;

    log::info!("stopping: no new requests; finishing in-flight work");
    // The state holds the registry, hence a handle to the writer: the writer threads end only once
    // it is gone.
    drop(state);
    parts.stop().await;
    served
        .context("the HTTP server task failed")?
        .context("the HTTP server failed")
}

/// A task that works in the background until told to stop (it gets the receiving end).
struct Background {
    task: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Background {
    fn spawn<F>(run: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = actix_rt::spawn(run(stopped));
        Background { task, stop }
    }

    /// Tells it to stop and waits until it has.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// What start-up started, to be stopped in order.
struct Started {
    keeper: JoinHandle<Keeper>,
    keeper_stop: oneshot::Sender<()>,
    name_pauses: Background,
    bulk_actions: Background,
    state_counts: Background,
    retention: Option<Background>,
    alerts: Option<Background>,
    broker: BrokerHandle,
    dispatcher: JoinHandle<()>,
    registry: Registry,
    arbiters: Vec<Arbiter>,
    relay: JoinHandle<()>,
    change_feed: ChangeFeed,
    writer_threads: Vec<thread::JoinHandle<()>>,
}

/// Waits for Postgres and migrates, then starts the writer, resumes every unfinished saga and
/// starts the broker and the relay; the API serves requests from then on.
async fn start(
    settings: &Settings,
    state: &AppState,
    mut amqp_settings: AmqpSettings,
    alert_settings: Option<AlertSettings>,
    metrics: Arc<Metrics>,
    changes: Changes,
    advertise: String,
) -> anyhow::Result<Started> {
    state.set_starting("connecting to Postgres", false);
    crate::startup::prepare_database(&settings.database_url, settings.db_wait, |reason| {
        state.set_starting(format!("waiting for Postgres: {reason}"), false);
    })
    .await?;
    state.set_starting("resuming unfinished sagas", true);
    let pool = store::pool(&settings.database_url, settings.db_pool_size)?;
    let store = Store::new(pool.clone());
    let wanted = settings.partitions;
    let partitions = store
        .interact(move |db| db.settle_partitions(wanted))
        .await
        .context("cannot settle the partition count")?;
    amqp_settings.partitions = partitions;
    let instance = settings.instance();
    log::info!(
        "instance {instance} ({advertise}); the database has {} partitions",
        partitions.count()
    );
    let ownership = Ownership::new(instance.clone(), partitions);
    let writers = settings.writer_threads.clamp(1, 64);
    let writer_pool = store::writer_pool(&settings.database_url, writers as u32)?;
    let (writer, writer_threads) =
        Writer::start(writer_pool, writers, Arc::clone(&metrics), &instance);
    // Live views across coordinators: ours told to the others, theirs relayed here.
    let change_feed = change_feed::start(
        changes.clone(),
        store.clone(),
        &settings.database_url,
        &instance,
    )
    .await
    .context("cannot start the change notice feed")?;

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
    let sendings = Sendings::default();
    let registry = Registry::new(
        actor_arbiters,
        writer.clone(),
        store.clone(),
        relay_tx,
        changes,
        Arc::clone(&metrics),
        sendings.clone(),
        ownership.clone(),
    );

    // Take this instance's share of the partitions (all of them when it is alone) and resume
    // their sagas before anything is routed; then keep the leases.
    let mut keeper = Keeper::new(
        ownership.clone(),
        store.clone(),
        registry.clone(),
        Arc::clone(&metrics),
        KeeperSettings {
            lease_ttl: settings.lease_ttl(),
            url: advertise,
        },
    );
    keeper
        .tick()
        .await
        .context("cannot take partition leases")?;
    log::info!(
        "owning {} of {} partitions",
        ownership.owned_count(),
        partitions.count()
    );
    let (keeper_stop, stopped) = oneshot::channel::<()>();
    let keeper = actix_rt::spawn(async move {
        let every = keeper.every();
        let mut stopped = stopped;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = keeper.tick().await {
                keeper.failed(e);
            }
        }
        keeper
    });

    let name_pauses = Background::spawn(|stopped| {
        name_pauses::run(registry.clone(), store.clone(), ownership.clone(), stopped)
    });
    let bulk_actions = Background::spawn(|stopped| {
        bulk_actions::run(
            registry.clone(),
            store.clone(),
            ownership.clone(),
            registry.bulk_wake(),
            settings.bulk_action_rate,
            stopped,
        )
    });
    let state_counts = Background::spawn(|stopped| state_counts::run(store.clone(), stopped));

    let policy = RetentionPolicy {
        committed: settings.retain_committed,
        compensated: settings.retain_compensated,
        aborted: settings.retain_aborted,
        rate: settings.retention_rate,
        every: settings.retention_interval,
    };
    let retention = if policy.keeps_everything() {
        None
    } else {
        log::info!(
            "retention: finished sagas are deleted after {:?}",
            policy.rules()
        );
        Some(Background::spawn(|stopped| {
            retention::run(
                policy,
                store.clone(),
                instance.clone(),
                Arc::clone(&metrics),
                stopped,
            )
        }))
    };

    let alerts = match alert_settings {
        Some(alert_settings) => {
            log::info!(
                "alerts go to {} (stuck after {:?})",
                alert_settings.url,
                alert_settings.stuck_after
            );
            Some(Background::spawn(|stopped| {
                alerts::run(
                    alert_settings,
                    store.clone(),
                    ownership.clone(),
                    Arc::clone(&metrics),
                    stopped,
                )
            }))
        }
        None => None,
    };

    let (outbound_tx, outbound_rx) = mpsc::unbounded_channel();
    let (published_tx, published_rx) = mpsc::unbounded_channel();
    let (inbound_tx, inbound_rx) = mpsc::channel(usize::from(settings.amqp_prefetch.max(16)) * 2);
    let broker = amqp::start(
        amqp_settings,
        outbound_rx,
        published_tx,
        inbound_tx,
        ownership.watch_owned(),
    );
    // The relay holds the last handle to the writer besides the actors'.
    let relay = relay::spawn(
        store.clone(),
        ownership.clone(),
        writer,
        relay_rx,
        outbound_tx,
        published_rx,
        metrics,
        sendings.clone(),
    );
    // Reply timeouts are held while the replies queue cannot be consumed (see `REPLY_GRACE`).
    let mut connected = broker.connected();
    actix_rt::spawn(async move {
        loop {
            let now_connected = *connected.borrow_and_update();
            sendings.consuming(now_connected, chrono::Utc::now());
            if connected.changed().await.is_err() {
                break;
            }
        }
    });
    let dispatcher = actix_rt::spawn(dispatch_inbound(inbound_rx, registry.clone()));
    state.started(Running {
        registry: registry.clone(),
        store,
        amqp_connected: broker.connected(),
        dead_letter_depth: broker.dead_letters(),
        ownership,
    });
    log::info!("started");
    Ok(Started {
        keeper,
        keeper_stop,
        name_pauses,
        bulk_actions,
        state_counts,
        retention,
        alerts,
        broker,
        dispatcher,
        registry,
        arbiters,
        relay,
        change_feed,
        writer_threads,
    })
}

impl Started {
    /// After the HTTP server stopped: the broker, then the actors, then the partition leases (so
    /// the other instances take over at once), then the writer once drained.
    async fn stop(self) {
        let Started {
            keeper,
            keeper_stop,
            name_pauses,
            bulk_actions,
            state_counts,
            retention,
            alerts,
            broker,
            dispatcher,
            registry,
            arbiters,
            relay,
            change_feed,
            writer_threads,
        } = self;
        for background in [name_pauses, bulk_actions, state_counts]
            .into_iter()
            .chain(retention)
            .chain(alerts)
        {
            background.stop().await;
        }
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
        // No saga commits here any more: the last changes go out before the partitions do.
        change_feed.stop().await;
        let _ = keeper_stop.send(());
        match keeper.await {
            Ok(keeper) => keeper.leave().await,
            Err(e) => log::warn!("the lease keeper ended abnormally ({e}); its leases expire"),
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
    }
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
    started: Option<oneshot::Receiver<()>>,
}

impl Coordinator {
    /// Starts the coordinator and returns once start-up is done and every request is served (it
    /// waits for Postgres as long as `settings.db_wait` says).
    pub fn start(settings: Settings) -> anyhow::Result<Coordinator> {
        let mut coordinator = Self::start_listening(settings)?;
        match coordinator
            .started
            .take()
            .map(|started| started.blocking_recv())
        {
            Some(Ok(())) => Ok(coordinator),
            _ => Err(coordinator
                .join()
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the coordinator stopped while starting"))),
        }
    }

    /// Starts the coordinator and returns as soon as it listens: `/healthz` and `/readyz` answer,
    /// the rest may still answer 503 while start-up waits for Postgres.
    pub fn start_listening(settings: Settings) -> anyhow::Result<Coordinator> {
        let (listening_tx, listening_rx) = oneshot::channel();
        let (started_tx, started_rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("coordinator".into())
            .spawn(move || {
                actix_rt::System::new().block_on(run(
                    settings,
                    false,
                    move |addr, handle| {
                        let _ = listening_tx.send((addr, handle));
                    },
                    move |_| {
                        let _ = started_tx.send(());
                    },
                ))
            })?;
        match listening_rx.blocking_recv() {
            Ok((addr, server)) => Ok(Coordinator {
                addr,
                server,
                thread: Some(thread),
                started: Some(started_rx),
            }),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("the coordinator stopped while starting")),
            },
        }
    }

    /// Waits until the thread ends (start-up failed, or stopped): its result.
    fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(anyhow::anyhow!("the coordinator thread panicked")),
            None => Ok(()),
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
