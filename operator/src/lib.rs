//! The operator's command line, `coordinator sagas <verb>`: every verb is one HTTP request to the
//! coordinator's API (docs/contract.md, section 2); it knows nothing of the store, the saga machine
//! or AMQP, and does not depend on the `coordinator` crate (ARCHITECTURE.md, invariants).
//!
//! - this file: the options every verb shares ([`SagasArgs`]) and [`run`];
//! - `verbs.rs`: the verbs, each as the request it sends and how its answer is shown;
//! - `bulk.rs`: the `bulk` verbs (an action over every saga a filter matches), and following one;
//! - `export.rs`: the `export` verb, whose answer is streamed to its output rather than read whole;
//! - `request.rs`: one request to the API, as the verbs describe it and the client sends it;
//! - `client.rs`: the HTTP exchange, and what a failed one tells the operator;
//! - `table.rs`: the answers as text for a person (pure functions of the JSON documents);
//! - `outcome.rs`: what happened, as the exit code.

mod bulk;
mod client;
mod export;
mod filters;
mod outcome;
mod request;
mod table;
mod verbs;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use url::Url;

pub use bulk::BulkVerb;
pub use export::ExportArgs;
pub use outcome::{Outcome, EXIT_CODES};
pub use verbs::{ListArgs, ResolveArgs, SagaId, Verb};

use client::Client;

/// Where a coordinator listens by default (its `SAGA_HTTP_ADDR`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// `coordinator sagas`: options shared by every verb, and the verb.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct SagasArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub verb: Verb,
}

/// Which coordinator to ask, and how to answer.
#[derive(Debug, Args)]
#[command(next_help_heading = "Options of every verb")]
pub struct Target {
    /// The coordinator's HTTP address (any of a cluster's instances: each forwards to the saga's
    /// owner).
    #[arg(long, env = "SAGA_URL", default_value = DEFAULT_URL, value_parser = parse_base_url, global = true)]
    pub url: Url,

    /// The coordinator's API token (its SAGA_API_TOKEN), sent as a bearer token. Prefer the
    /// environment variable: a command line is visible to other users of the machine.
    #[arg(long, env = "SAGA_API_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// Print the API's JSON document (pretty) instead of text for a person.
    #[arg(long, global = true)]
    pub json: bool,

    /// Seconds to wait for the coordinator's answer before giving up (exit code 6).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    pub timeout_secs: u64,
}

/// `--url`: an http(s) URL that paths can be appended to (a path prefix, as behind a reverse proxy,
/// is kept).
fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL ({e}); e.g. {DEFAULT_URL}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!("not an http(s) URL; e.g. {DEFAULT_URL}"));
    }
    Ok(url)
}

/// `--token` is something an `Authorization` header can carry. Checked here rather than by a clap
/// value parser, whose message would print the secret.
fn usable_token(token: &str) -> bool {
    !token.is_empty() && reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_ok()
}

/// Runs one verb and says what happened as the exit code ([`EXIT_CODES`]). The answer goes to
/// stdout; failures, with the API's reasons, to stderr.
pub fn run(args: SagasArgs) -> ExitCode {
    // One request, so a current-thread runtime: reqwest's `blocking` client would start a runtime
    // on a thread of its own anyway, and the async client is the one the workspace already builds.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("coordinator sagas: cannot start an async runtime: {e}");
            return Outcome::Unexpected.into();
        }
    };
    runtime.block_on(execute(&args)).into()
}

async fn execute(args: &SagasArgs) -> Outcome {
    let target = &args.target;
    if target.token.as_deref().is_some_and(|t| !usable_token(t)) {
        eprintln!(
            "coordinator sagas: --token (or SAGA_API_TOKEN) is not a usable bearer token: it is \
             empty or holds a control character, such as a trailing newline"
        );
        return Outcome::Usage;
    }
    let client = Client::new(
        target.url.clone(),
        target.token.clone(),
        Duration::from_secs(target.timeout_secs),
    );
    let client = match client {
        Ok(client) => client,
        Err(failure) => {
            eprint!("{}", failure.report());
            return failure.outcome();
        }
    };
    if let Verb::Export(export) = &args.verb {
        return export::run(&client, export).await;
    }
    let mut answer = client.send(&args.verb.request()).await;
    if let (Verb::Bulk(bulk), Ok(document)) = (&args.verb, &answer) {
        if bulk.waits() {
            answer = follow(&client, document.clone()).await;
        }
    }
    match answer {
        Ok(document) => {
            let text = if target.json {
                pretty(&document)
            } else {
                args.verb.render(&document)
            };
            emit(&text)
        }
        Err(failure) => {
            eprint!("{}", failure.report());
            failure.outcome()
        }
    }
}

/// Reads a bulk action again every second until it is no longer running, with a progress line on
/// stderr whenever it moved; answers its last document.
async fn follow(
    client: &Client,
    mut document: serde_json::Value,
) -> Result<serde_json::Value, client::Failure> {
    let id = document
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut last = String::new();
    loop {
        let line = table::bulk_progress(&document);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if !bulk::running(&document) {
            return Ok(document);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        document = client.send(&bulk::reread(&id)).await?;
    }
}

fn pretty(document: &serde_json::Value) -> String {
    // Serialising a `Value` cannot fail (its keys are strings); `Display` would be compact.
    let mut text = serde_json::to_string_pretty(document).unwrap_or_else(|_| document.to_string());
    text.push('\n');
    text
}

/// Writes the answer to stdout. A reader that went away (`| head`) is not a failure of the verb:
/// the coordinator did what was asked.
fn emit(text: &str) -> Outcome {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Outcome::Success,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Outcome::Success,
        Err(e) => {
            eprintln!("coordinator sagas: cannot write the answer: {e}");
            Outcome::Unexpected
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// The binary's shape: `sagas` as a subcommand of a parser.
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand)]
    enum Command {
        Sagas(SagasArgs),
    }

    fn parse(args: &[&str]) -> Result<SagasArgs, clap::Error> {
        let argv = ["coordinator", "sagas"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Sagas(args) => args,
        })
    }

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shared_options_go_before_or_after_the_verb() {
        let args = parse(&["show", "x", "--json", "--url", "http://h:1/prefix/"])
            .expect("valid arguments");
        assert!(args.target.json);
        assert_eq!(args.target.url.as_str(), "http://h:1/prefix/");
        let args = parse(&["--timeout-secs", "3", "list"]).expect("valid arguments");
        assert_eq!(args.target.timeout_secs, 3);
    }

    #[test]
    fn usage_errors_are_clap_errors_with_exit_code_2() {
        for bad in [
            &["show"][..],
            &["resolve", "x"],
            &["list", "--limit", "0"],
            &["list", "--limit", "501"],
            &["list", "--url", "ftp://h/"],
            &["list", "--url", "not a url"],
            &["list", "--timeout-secs", "0"],
        ] {
            let error = parse(bad).expect_err("a usage error");
            assert_eq!(
                error.exit_code(),
                i32::from(Outcome::Usage.code()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_token_must_fit_in_a_header() {
        assert!(usable_token("s3cret-token.with_symbols+/="));
        for bad in ["", "s3cret\n", "a\rb", "tab\u{7f}"] {
            assert!(!usable_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command()
            .find_subcommand_mut("sagas")
            .expect("the sagas subcommand")
            .render_help()
            .to_string();
        assert!(help.contains(EXIT_CODES), "{help}");
    }
}
