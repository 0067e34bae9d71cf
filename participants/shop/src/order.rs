//! The `place-order` saga: reserve stock, charge the customer, book shipping.

use std::time::Duration;

use uuid::Uuid;

use crate::inventory::Reserve;
use crate::payments::Charge;
use crate::shipping::Ship;
use crate::ShopSettings;
use participants::client::{RetryPolicy, SagaRequest, StepRequest};

/// Price of one item, in cents.
pub const PRICE_CENTS: i64 = 1_250;

/// Timeouts and retries of the saga's steps.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPolicy {
    pub step_timeout: Duration,
    pub retry: RetryPolicy,
    pub compensation_retry: RetryPolicy,
}

impl Default for OrderPolicy {
    fn default() -> Self {
        OrderPolicy {
            step_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_attempts: 4,
                initial_backoff_ms: 200,
                max_backoff_ms: 2_000,
                multiplier: 2.0,
            },
            compensation_retry: RetryPolicy {
                max_attempts: 30,
                initial_backoff_ms: 200,
                max_backoff_ms: 2_000,
                multiplier: 2.0,
            },
        }
    }
}

/// One order.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub reserve: Reserve,
    pub charge: Charge,
    pub ship: Ship,
}

impl Order {
    /// A random order over the shop's SKUs and accounts.
    pub fn random(shop: &ShopSettings) -> Order {
        let qty = fastrand::i64(1..=3);
        Order {
            reserve: Reserve {
                sku: format!("sku-{}", fastrand::u32(0..shop.skus.max(1))),
                qty,
            },
            charge: Charge {
                account: format!("acct-{}", fastrand::u32(0..shop.accounts.max(1))),
                amount_cents: qty * PRICE_CENTS,
            },
            ship: Ship {
                address: format!("{} Saga Street", fastrand::u32(1..1000)),
            },
        }
    }

    /// The saga that places this order, with a random idempotency key (the order service replaces
    /// it with one derived from the order row, [`crate::orders::saga_key`]).
    pub fn saga(&self, policy: &OrderPolicy) -> SagaRequest {
        let step = |name: &str, participant: &str, action: &str, compensation: &str| {
            StepRequest::new(name, participant, action)
                .compensation(compensation)
                .timeout(policy.step_timeout)
                .retry(policy.retry.clone())
                .compensation_retry(policy.compensation_retry.clone())
        };
        SagaRequest::new("place-order")
            .key(format!("order-{}", Uuid::new_v4()))
            .payload(serde_json::json!({"sku": self.reserve.sku, "account": self.charge.account}))
            .step(step("reserve", "inventory", "reserve", "release").payload(&self.reserve))
            .step(step("charge", "payments", "charge", "refund").payload(&self.charge))
            .step(step("ship", "shipping", "book", "cancel").payload(&self.ship))
    }
}
