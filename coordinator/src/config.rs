//! Typed settings, read from the environment (and command-line flags, which win).
//!
//! clap documents every setting in `coordinator serve --help`, with its environment variable and default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use contract::names::QueueType;

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Postgres connection URL. The database is created if it is missing.
    #[arg(
        long,
        env = "SAGA_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/saga"
    )]
    pub database_url: String,

    /// RabbitMQ connection URL, or the nodes of a cluster as a comma-separated list: each
    /// (re)connection tries the next one in turn.
    #[arg(
        long,
        env = "SAGA_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Address the HTTP API and dashboard listen on (port 0 picks a free port).
    #[arg(long, env = "SAGA_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,

    /// Prefix of every AMQP exchange and queue name.
    #[arg(long, env = "SAGA_NAMESPACE", default_value = "saga")]
    pub namespace: String,

    /// Type of every queue the coordinator declares, `classic` or `quorum` (replicated: what a
    /// RabbitMQ cluster needs to survive the loss of a node). Participants must use the same; an
    /// existing namespace cannot switch type in place (docs/contract-notes.md).
    #[arg(long, env = "SAGA_QUEUE_TYPE", default_value = "classic", value_parser = QueueType::parse)]
    pub queue_type: QueueType,

    /// When set, every /api/ request needs `Authorization: Bearer <token>`.
    #[arg(long, env = "SAGA_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Serve without `SAGA_API_TOKEN` on an address other than loopback: anyone who reaches it may
    /// then submit, abort, commit and resolve sagas. Without this, `serve` refuses to start so.
    #[arg(long, env = "SAGA_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Hosts HTTP check-backs may be sent to, comma-separated: `host` (any port) or `host:port`.
    /// When set, a submission whose `check_back.url` names another host is refused (422). Unset,
    /// every host is allowed.
    #[arg(long, env = "SAGA_CHECK_BACK_HOSTS", value_delimiter = ',')]
    pub check_back_hosts: Vec<String>,

    /// A link to a saga's trace for the dashboard: `{trace_id}` is replaced by the trace id (for
    /// example `http://jaeger:16686/trace/{trace_id}`). Unset: the trace id is shown without one.
    #[arg(long, env = "SAGA_TRACE_URL_TEMPLATE")]
    pub trace_url_template: Option<String>,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SAGA_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,

    /// Postgres connections in the pool (HTTP reads, recovery and the outbox sweep share it; the
    /// writer threads have connections of their own).
    #[arg(long, env = "SAGA_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// Unacknowledged replies RabbitMQ may hand the coordinator at once, per reply queue consumed.
    #[arg(long, env = "SAGA_AMQP_PREFETCH", default_value_t = 256)]
    pub amqp_prefetch: u16,

    /// Threads of their own for saga actors; 0 runs them on the main thread, beside the AMQP
    /// consumer and the outbox relay. A transition costs the actor microseconds and a thread switch
    /// costs tens of them, so 0 was fastest on 2 cores (docs/benchmark.md); more threads only help
    /// when the main thread is saturated.
    #[arg(long, env = "SAGA_ACTOR_THREADS", default_value_t = 0)]
    pub actor_threads: usize,

    /// Writer threads committing transitions, each with a Postgres connection of its own (outside
    /// the pool). Each commits one batch at a time. One gives the largest batches and the fewest
    /// commits, and had the lowest latency under load on 2 cores (docs/benchmark.md); more overlap
    /// commits, which helps when Postgres has cores to spare.
    #[arg(long, env = "SAGA_WRITER_THREADS", default_value_t = 1)]
    pub writer_threads: usize,

    /// How long `serve` waits for Postgres at start-up before giving up (exit status 1): seconds
    /// (`90`) or a duration (`500ms`, `90s`, `5m`, `1h`); `0` tries once. Unset, it waits as long as it
    /// takes, answering `/healthz` and (503) `/readyz` meanwhile. `migrate` never waits.
    #[arg(long, env = "SAGA_DB_WAIT", value_parser = parse_wait)]
    pub db_wait: Option<Duration>,

    /// This coordinator's name among those sharing the database: the owner of its partition
    /// leases. Each must have its own; a restarted one that keeps its name takes its partitions
    /// back at once instead of after their leases expire. Default: `{hostname}/{SAGA_HTTP_ADDR}`.
    #[arg(long, env = "SAGA_INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,

    /// Partitions of a new database (default 64). Fixed once the database has sagas: a different
    /// number is then refused. Unset, the database's own count is used.
    #[arg(long, env = "SAGA_PARTITIONS")]
    pub partitions: Option<u32>,

    /// How long a partition lease lasts without renewal (renewed every third of it): a dead or frozen
    /// coordinator's sagas move to the others after about this long.
    #[arg(long, env = "SAGA_LEASE_TTL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(300..))]
    pub lease_ttl_ms: u64,

    /// Where the other coordinators reach this one's HTTP API, to forward requests about its sagas
    /// (default: `http://` and the bound address). Set it when they reach it by another name.
    #[arg(long, env = "SAGA_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// Where alerts go (HTTP POST, JSON; docs/alerts.md): when a saga becomes `failed` (it needs
    /// an operator) and when one is stuck (in flight longer than `SAGA_STUCK_AFTER`). Unset: none.
    #[arg(long, env = "SAGA_ALERT_URL", value_parser = parse_alert_url)]
    pub alert_url: Option<url::Url>,

    /// Signs every alert: `X-Saga-Signature: sha256=` and the hex HMAC-SHA256 of the body under
    /// this secret. Required with `SAGA_ALERT_URL`.
    #[arg(long, env = "SAGA_ALERT_SECRET", hide_env_values = true)]
    pub alert_secret: Option<String>,

    /// A saga in flight (prepared, running, compensating) longer than this is stuck: one alert.
    /// A duration (`90s`, `30m`, `2h`, `1d`).
    #[arg(long, env = "SAGA_STUCK_AFTER", default_value = "1h", value_parser = parse_wait)]
    pub stuck_after: Duration,

    /// Sagas per second each coordinator applies a bulk action to (docs/contract-notes.md): low enough
    /// that live sagas keep the writer, high enough that a thousand are done in seconds.
    #[arg(long, env = "SAGA_BULK_ACTION_RATE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub bulk_action_rate: u32,

    /// How long a `committed` saga is kept after it finished (`7d`, `90d`, `12h`, or `forever`, the
    /// default); then it is deleted with its steps and event log (docs/contract-notes.md,
    /// "Retention"). At least a minute.
    #[arg(long, env = "SAGA_RETAIN_COMMITTED", default_value = "forever", value_parser = parse_retention)]
    pub retain_committed: Retention,

    /// The same for `compensated` sagas.
    #[arg(long, env = "SAGA_RETAIN_COMPENSATED", default_value = "forever", value_parser = parse_retention)]
    pub retain_compensated: Retention,

    /// The same for `aborted` sagas. `failed` and unfinished sagas are never deleted.
    #[arg(long, env = "SAGA_RETAIN_ABORTED", default_value = "forever", value_parser = parse_retention)]
    pub retain_aborted: Retention,

    /// Finished sagas per second each coordinator deletes at most (a saga is about a dozen rows):
    /// a year's backlog goes slowly, and live sagas keep Postgres. Far above what a steady state
    /// needs (a shop finishing ten million sagas a year deletes one every three seconds).
    #[arg(long, env = "SAGA_RETENTION_RATE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_rate: u32,

    /// How often each coordinator looks for finished sagas past their retention, once the last
    /// look found none left.
    #[arg(long, env = "SAGA_RETENTION_INTERVAL", default_value = "30s", value_parser = parse_wait)]
    pub retention_interval: Duration,

    /// Per saga name: `place-order=10m,refund=1d` (others use `SAGA_STUCK_AFTER`).
    #[arg(long, env = "SAGA_STUCK_AFTER_BY_NAME", value_delimiter = ',', value_parser = parse_stuck_after)]
    pub stuck_after_by_name: Vec<(String, Duration)>,
}

/// `SAGA_ALERT_URL`: an http or https URL.
pub fn parse_alert_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "{text:?}: alerts are sent over http or https, not {other}"
        )),
    }
}

/// One `name=duration` of `SAGA_STUCK_AFTER_BY_NAME`.
pub fn parse_stuck_after(text: &str) -> Result<(String, Duration), String> {
    let (name, after) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not name=duration (e.g. place-order=10m)"))?;
    let name = name.trim();
    if !crate::submission::is_name(name) {
        return Err(format!("{name:?} is not a saga name"));
    }
    Ok((name.to_owned(), parse_wait(after)?))
}

/// Longest `SAGA_INSTANCE_ID`, in bytes: it is part of the instance's reply queue name
/// (`{ns}.replies.at.{id}`), which RabbitMQ limits to 255 bytes.
pub const MAX_INSTANCE_ID_BYTES: usize = 100;

/// A `SAGA_INSTANCE_ID`: at most [`MAX_INSTANCE_ID_BYTES`], without control characters (it names
/// a queue and shows in logs). Empty means the default.
pub fn parse_instance_id(text: &str) -> Result<String, String> {
    let id = text.trim();
    if id.len() > MAX_INSTANCE_ID_BYTES {
        return Err(format!(
            "is {} bytes long; at most {MAX_INSTANCE_ID_BYTES} (it names this coordinator's reply \
             queue)",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("must not hold control characters".into());
    }
    Ok(id.to_owned())
}

/// `90`, `90s`, `500ms`, `5m`, `1h`: a number of seconds unless a unit says otherwise.
pub fn parse_wait(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30, 30s, 500ms, 5m, 1h)"))?;
    let scale = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    };
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => scale(1),
        "m" => scale(60),
        "h" => scale(3600),
        "d" => scale(86_400),
        other => Err(format!(
            "unknown unit {other:?} in {text:?} (use ms, s, m, h or d)"
        )),
    }
}

/// How long finished sagas of one final state are kept: `None` is forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// The shortest retention: a saga that just finished is still being read by whoever submitted it.
pub const SHORTEST_RETENTION: Duration = Duration::from_secs(60);

/// `forever`, or a duration of at least [`SHORTEST_RETENTION`] (`90d`, `12h`, `30m`).
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    if text.trim() == "forever" {
        return Ok(Retention(None));
    }
    let keep = parse_wait(text).map_err(|e| format!("{e}, or forever"))?;
    if keep < SHORTEST_RETENTION {
        return Err(format!(
            "{text:?} is shorter than a minute, the shortest retention"
        ));
    }
    Ok(Retention(Some(keep)))
}

impl Settings {
    /// Settings from the environment and defaults only, for embedding the coordinator (tests, benchmarks).
    pub fn from_env() -> Result<Self, String> {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        Only::try_parse_from(["coordinator"])
            .map(|only| only.settings)
            .map_err(|e| e.to_string())
    }

    /// This instance's owner id (see `instance_id`).
    pub fn instance(&self) -> String {
        match &self.instance_id {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => {
                // The kernel's name for the host (a container's own in a container).
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "localhost".to_owned());
                format!("{host}/{}", self.http_addr)
            }
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// The token, unless unset or empty (an empty token guards nothing).
    pub fn token(&self) -> Option<&str> {
        self.api_token.as_deref().filter(|t| !t.is_empty())
    }

    /// Why `serve` must not answer on `listening`, if it must not: an API without a token is open to
    /// whoever reaches it, which is only safe where no one else can (loopback), unless
    /// `SAGA_ALLOW_UNAUTHENTICATED` says it is meant.
    pub fn open_api_refusal(&self, listening: &[SocketAddr]) -> Option<String> {
        if self.token().is_some() || self.allow_unauthenticated {
            return None;
        }
        let exposed: Vec<String> = listening
            .iter()
            .filter(|addr| !addr.ip().is_loopback())
            .map(ToString::to_string)
            .collect();
        if exposed.is_empty() {
            return None;
        }
        Some(format!(
            "refusing to serve the API without a token on {} (SAGA_HTTP_ADDR={}): anyone who can \
             reach it could submit, abort, commit and resolve sagas. Set SAGA_API_TOKEN (--api-token), \
             listen on a loopback address (127.0.0.1, ::1, localhost), or set \
             SAGA_ALLOW_UNAUTHENTICATED=true (--allow-unauthenticated) if an open API is meant",
            exposed.join(", "),
            self.http_addr
        ))
    }

    /// How long a graceful shutdown waits for in-flight work.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_id_fits_in_a_queue_name() {
        assert_eq!(parse_instance_id(" c1 "), Ok("c1".to_owned()));
        assert_eq!(
            parse_instance_id("pod-7f9c/0.0.0.0:8080"),
            Ok("pod-7f9c/0.0.0.0:8080".to_owned())
        );
        assert_eq!(parse_instance_id(""), Ok(String::new()));
        assert!(parse_instance_id(&"x".repeat(MAX_INSTANCE_ID_BYTES)).is_ok());
        let long = parse_instance_id(&"x".repeat(MAX_INSTANCE_ID_BYTES + 1));
        assert!(long.is_err_and(|e| e.contains("at most 100")));
        assert!(parse_instance_id("c1\n").is_ok(), "trimmed");
        assert!(parse_instance_id("c\u{7}1").is_err());
    }

    #[test]
    fn a_wait_is_seconds_unless_a_unit_says_otherwise() {
        assert_eq!(parse_wait("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_wait("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_wait("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_wait("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_wait(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_wait("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        for wrong in ["", "s", "-1", "1.5s", "10w", "forever"] {
            assert!(parse_wait(wrong).is_err(), "{wrong:?} was accepted");
        }
    }

    #[test]
    fn retention_is_forever_or_at_least_a_minute() {
        assert_eq!(parse_retention("forever"), Ok(Retention(None)));
        assert_eq!(
            parse_retention("90d"),
            Ok(Retention(Some(Duration::from_secs(90 * 86_400))))
        );
        assert_eq!(
            parse_retention("1m"),
            Ok(Retention(Some(Duration::from_secs(60))))
        );
        for wrong in ["", "59s", "0", "never", "-1d", "10w"] {
            assert!(parse_retention(wrong).is_err(), "{wrong:?}");
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|a| a.parse().expect("an address"))
            .collect()
    }

    #[test]
    fn an_api_without_a_token_is_served_only_on_loopback_unless_allowed() {
        let mut settings = Settings::from_env().expect("the defaults parse");
        settings.api_token = None;
        settings.allow_unauthenticated = false;
        for loopback in [
            &["127.0.0.1:8080"][..],
            &["127.0.0.9:1"],
            &["[::1]:8080", "127.0.0.1:8080"],
        ] {
            assert_eq!(
                settings.open_api_refusal(&addrs(loopback)),
                None,
                "{loopback:?}"
            );
        }
        for exposed in [
            &["0.0.0.0:8080"][..],
            &["[::]:8080"],
            &["127.0.0.1:1", "10.0.0.5:1"],
        ] {
            let refusal = settings.open_api_refusal(&addrs(exposed));
            let message = refusal.unwrap_or_else(|| panic!("{exposed:?} was allowed"));
            assert!(
                message.contains("SAGA_API_TOKEN")
                    && message.contains("SAGA_ALLOW_UNAUTHENTICATED"),
                "{message}"
            );
        }
        settings.api_token = Some(String::new());
        assert!(
            settings.open_api_refusal(&addrs(&["0.0.0.0:1"])).is_some(),
            "an empty token is none"
        );
        settings.api_token = Some("s3cret".into());
        assert_eq!(settings.open_api_refusal(&addrs(&["0.0.0.0:1"])), None);
        settings.api_token = None;
        settings.allow_unauthenticated = true;
        assert_eq!(settings.open_api_refusal(&addrs(&["0.0.0.0:1"])), None);
    }

    #[test]
    fn the_queue_type_is_classic_unless_set() {
        let settings = Settings::from_env().expect("the defaults parse");
        if std::env::var_os("SAGA_QUEUE_TYPE").is_none() {
            assert_eq!(settings.queue_type, QueueType::Classic);
        }
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        let parsed = Only::try_parse_from(["coordinator", "--queue-type", "quorum"])
            .expect("quorum is a queue type");
        assert_eq!(parsed.settings.queue_type, QueueType::Quorum);
        let refused = Only::try_parse_from(["coordinator", "--queue-type", "mirrored"])
            .err()
            .expect("mirrored is not a queue type");
        assert!(
            refused.to_string().contains("classic or quorum"),
            "{refused}"
        );
    }

    #[test]
    fn by_default_start_up_waits_for_postgres_as_long_as_it_takes() {
        let settings = Settings::from_env().expect("the defaults parse");
        if std::env::var_os("SAGA_DB_WAIT").is_none() {
            assert_eq!(settings.db_wait, None);
        }
    }
}
