//! How a participant reaches the broker and how much it takes on at once.

use contract::names::QueueType;

use crate::Error;

/// Settings of a [`Participant`](crate::Participant).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// RabbitMQ, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`, or the nodes of a cluster as a
    /// comma-separated list of such URLs: each (re)connection tries the next in turn. A comma in a
    /// password is written `%2C`.
    pub amqp_url: String,
    /// The coordinator's namespace (`SAGA_NAMESPACE`): the prefix of every AMQP name.
    pub namespace: String,
    /// The type the participant's queue is declared with (`SAGA_QUEUE_TYPE`): the coordinator's,
    /// or RabbitMQ refuses the declaration. `Quorum` in a cluster that must survive losing a node.
    pub queue_type: QueueType,
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
            queue_type: QueueType::Classic,
            prefetch: 32,
            concurrency: 16,
            redeliver_rate: 0.0,
        }
    }
}

impl Settings {
    /// The defaults, overridden by `SAGA_AMQP_URL`, `SAGA_NAMESPACE`, `SAGA_QUEUE_TYPE`,
    /// `PARTICIPANT_PREFETCH` and `PARTICIPANT_CONCURRENCY` when they are set.
    pub fn from_env() -> Result<Settings, Error> {
        Settings::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Settings::from_env`] with the variables read through `var`.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings, Error> {
        let mut settings = Settings::default();
        if let Some(url) = var("SAGA_AMQP_URL") {
            settings.amqp_url = url;
        }
        if let Some(ns) = var("SAGA_NAMESPACE") {
            settings.namespace = ns;
        }
        if let Some(queue_type) = var("SAGA_QUEUE_TYPE") {
            settings.queue_type = QueueType::parse(&queue_type)
                .map_err(|e| Error::Settings(format!("SAGA_QUEUE_TYPE: {e}")))?;
        }
        if let Some(n) = parse_var(&var, "PARTICIPANT_PREFETCH")? {
            settings.prefetch = n;
        }
        if let Some(n) = parse_var(&var, "PARTICIPANT_CONCURRENCY")? {
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

    /// Sets the queue type (the coordinator's `SAGA_QUEUE_TYPE`).
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
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

fn parse_var<T: std::str::FromStr>(
    var: impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<T>, Error> {
    match var(name) {
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::Settings(format!("{name}={v:?} is not a valid number"))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(set: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let set: Vec<(String, String)> = set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| set.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_queue_type_is_classic_unless_the_environment_says_quorum() {
        assert_eq!(
            Settings::from_vars(vars(&[])).expect("defaults").queue_type,
            QueueType::Classic
        );
        let quorum = Settings::from_vars(vars(&[
            ("SAGA_QUEUE_TYPE", "quorum"),
            ("SAGA_AMQP_URL", "amqp://a:5681/%2f,amqp://b:5682/%2f"),
        ]))
        .expect("quorum");
        assert_eq!(quorum.queue_type, QueueType::Quorum);
        assert_eq!(quorum.amqp_url, "amqp://a:5681/%2f,amqp://b:5682/%2f");
        assert_eq!(
            Settings::default().queue_type(QueueType::Quorum).queue_type,
            QueueType::Quorum
        );
        let refused = Settings::from_vars(vars(&[("SAGA_QUEUE_TYPE", "mirrored")]))
            .expect_err("mirrored is no queue type");
        assert!(refused.to_string().contains("SAGA_QUEUE_TYPE"), "{refused}");
    }
}
