//! How a participant reaches the broker and how much it takes on at once.

use crate::Error;

/// Settings of a [`Participant`](crate::Participant).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// RabbitMQ, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: String,
    /// The coordinator's namespace (`SAGA_NAMESPACE`): the prefix of every AMQP name.
    pub namespace: String,
    /// Commands the broker hands over before they are acknowledged.
    pub prefetch: u16,
    /// Handlers running at once (at most `prefetch` are useful).
    pub concurrency: usize,
    /// **Fault injection, for tests and demos only** (0 in production): the probability that a
    /// command, after its reply is confirmed, is handed back to the queue instead of acknowledged,
    /// so that it is delivered again, as when an acknowledgement is lost.
    pub redeliver_rate: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_string(),
            namespace: "saga".to_string(),
            prefetch: 32,
            concurrency: 16,
            redeliver_rate: 0.0,
        }
    }
}

impl Settings {
    /// The defaults, overridden by `SAGA_AMQP_URL`, `SAGA_NAMESPACE`, `PARTICIPANT_PREFETCH` and
    /// `PARTICIPANT_CONCURRENCY` when they are set.
    pub fn from_env() -> Result<Settings, Error> {
        let mut settings = Settings::default();
        if let Ok(url) = std::env::var("SAGA_AMQP_URL") {
            settings.amqp_url = url;
        }
        if let Ok(ns) = std::env::var("SAGA_NAMESPACE") {
            settings.namespace = ns;
        }
        if let Some(n) = parse_env("PARTICIPANT_PREFETCH")? {
            settings.prefetch = n;
        }
        if let Some(n) = parse_env("PARTICIPANT_CONCURRENCY")? {
            settings.concurrency = n;
        }
        Ok(settings)
    }

    /// Sets the broker URL.
    pub fn amqp_url(mut self, url: impl Into<String>) -> Self {
        self.amqp_url = url.into();
        self
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the prefetch window.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Sets how many handlers run at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.prefetch == 0 || self.concurrency == 0 {
            return Err(Error::Settings(
                "prefetch and concurrency must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.redeliver_rate) {
            return Err(Error::Settings(
                "redeliver_rate must be within 0..=1".into(),
            ));
        }
        Ok(())
    }
}

fn parse_env<T: std::str::FromStr>(name: &str) -> Result<Option<T>, Error> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::Settings(format!("{name}={v:?} is not a valid number"))),
        Err(_) => Ok(None),
    }
}
