//! The demo: the shop's services, a steady stream of orders placed with the order service (whose
//! outbox relay starts their sagas on a running coordinator), a report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::order::{Order, OrderPolicy};
use crate::orders;
use crate::report::{self, Report};
use crate::{Faults, Service, ShopSettings};
use participants::client::{Client, SagaState};
use participants::Settings;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct Demo {
    pub client: Client,
    pub shop: ShopSettings,
    pub participant: Settings,
    pub faults: Faults,
    /// Run the three services in this process (else they run elsewhere, e.g. `shop serve`).
    pub start_services: bool,
    pub orders: usize,
    /// Orders submitted per second.
    pub rate: f64,
    pub policy: OrderPolicy,
    /// How long to wait for one saga to become final.
    pub saga_timeout: Duration,
}

/// Runs the demo and returns the consistency report.
pub async fn run(demo: Demo) -> anyhow::Result<Report> {
    let services = if demo.start_services {
        let (shop, settings, faults) = (
            demo.shop.clone(),
            demo.participant.clone(),
            demo.faults.clone(),
        );
        tokio::task::spawn_blocking(move || crate::spawn(&Service::ALL, &shop, &settings, &faults))
            .await??
    } else {
        Vec::new()
    };
    let orders_pool = {
        let shop = demo.shop.clone();
        tokio::task::spawn_blocking(move || {
            orders::install(&shop)?;
            shop.orders_pool(4)
        })
        .await??
    };
    let relay = orders::relay(&demo.shop, demo.client.clone(), None);
    let wake = relay.handle();
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run_until(async {
        let _ = relay_stopped.await;
    }));
    println!(
        "placing {} orders ({}/s); the order service's outbox relay submits their sagas to {}; \
         watch them at {}/",
        demo.orders,
        demo.rate,
        demo.client.base_url(),
        demo.client.base_url()
    );

    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / demo.rate.max(0.01));
    // Bounds the sagas being watched at once, not the order rate.
    let watching = Arc::new(Semaphore::new(256));
    let mut sagas = JoinSet::new();
    for n in 1..=demo.orders {
        let order = Order::random(&demo.shop);
        let placed = {
            let (pool, order, policy, wake) = (
                orders_pool.clone(),
                order.clone(),
                demo.policy.clone(),
                wake.clone(),
            );
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let mut conn = pool.get()?;
                Ok(orders::place_and_wake(&mut conn, &order, &policy, &wake)?)
            })
            .await?
        };
        let placed = match placed {
            Ok(placed) => placed,
            Err(e) => {
                eprintln!("order {n}: not placed: {e:#}");
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        let pool = orders_pool.clone();
        let client = demo.client.clone();
        let timeout = demo.saga_timeout;
        let permit = watching.clone().acquire_owned().await?;
        sagas.spawn(async move {
            let _permit = permit;
            let saga = match orders::wait_for_saga(&pool, placed.id, timeout).await {
                Ok(saga) => saga,
                Err(e) => {
                    println!("order {n:>4}: {e:#}");
                    return None;
                }
            };
            let result = client.wait(saga, timeout).await;
            let state = match &result {
                Ok(done) => {
                    let why = done
                        .steps
                        .iter()
                        .find_map(|s| s.error.as_ref().map(|e| format!(" ({}: {e})", s.name)))
                        .unwrap_or_default();
                    println!(
                        "order {n:>4} {saga} {} x{}: {:?}{why}",
                        order.reserve.sku, order.reserve.qty, done.state
                    );
                    done.state
                }
                Err(e) => {
                    println!("order {n:>4} {saga}: {e}");
                    SagaState::Unknown
                }
            };
            Some((saga, state))
        });
        tokio::time::sleep(interval).await;
    }
    let mut states: Vec<(Uuid, SagaState)> = Vec::new();
    while let Some(joined) = sagas.join_next().await {
        states.extend(joined?);
    }
    println!(
        "{} sagas settled in {:.1} s",
        states.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = stop_relay.send(());
    relay_task.await?;
    for service in services {
        service.shutdown().await;
    }
    let shop = demo.shop.clone();
    let report =
        tokio::task::spawn_blocking(move || report::check(&shop, &states, false)).await??;
    Ok(report)
}
