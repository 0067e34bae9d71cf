//! Typed settings, read from the environment (and command-line flags, which win).
//!
//! clap documents every setting in `coordinator serve --help`, with its environment variable and default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Postgres connection URL. The database is created if it is missing.
    #[arg(
        long,
        env = "SAGA_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/saga"
    )]
    pub database_url: String,

    /// RabbitMQ connection URL.
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

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SAGA_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,

    /// Postgres connections in the pool (HTTP reads, recovery and the outbox sweep share it; the
    /// writer threads have connections of their own).
    #[arg(long, env = "SAGA_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// Unacknowledged replies RabbitMQ may hand the coordinator at once.
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
        other => Err(format!(
            "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
        )),
    }
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
    fn a_wait_is_seconds_unless_a_unit_says_otherwise() {
        assert_eq!(parse_wait("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_wait("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_wait("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_wait("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_wait(" 1h "), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        for wrong in ["", "s", "-1", "1.5s", "10d", "forever"] {
            assert!(parse_wait(wrong).is_err(), "{wrong:?} was accepted");
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
    fn by_default_start_up_waits_for_postgres_as_long_as_it_takes() {
        let settings = Settings::from_env().expect("the defaults parse");
        if std::env::var_os("SAGA_DB_WAIT").is_none() {
            assert_eq!(settings.db_wait, None);
        }
    }
}
