//! The HTTP exchange with the coordinator, and what a failed one tells the operator: the API's
//! problem document (RFC 9457: `title`, `detail`, `errors[]`), or why no answer came.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

use crate::outcome::Outcome;
use crate::request::Request;
use crate::table::printable;

/// The coordinator's API at one base URL.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    timeout: Duration,
}

/// Why a verb did not get a 2xx answer with a JSON document.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    #[error("no answer from the coordinator at {base}: {reason} ({method} {url})")]
    Unreachable {
        base: String,
        method: String,
        url: String,
        reason: String,
    },
    #[error("{}", refusal_line(*.status, .problem.as_ref(), .body))]
    Refused {
        status: StatusCode,
        problem: Option<Problem>,
        /// The start of the body, when it is no problem document.
        body: String,
    },
    #[error("the coordinator's answer to {method} {url} is not what the API documents: {reason}")]
    Unparsable {
        method: String,
        url: String,
        reason: String,
    },
}

/// The parts of a problem document an operator reads.
#[derive(Debug, Default, PartialEq)]
pub struct Problem {
    pub title: Option<String>,
    pub detail: Option<String>,
    /// `(field, message)` for each broken rule of a 422.
    pub errors: Vec<(String, String)>,
}

impl Problem {
    /// Reads a problem document leniently: whatever of it is there.
    pub fn parse(body: &[u8]) -> Option<Problem> {
        let doc: Value = serde_json::from_slice(body).ok()?;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let errors = doc
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| {
                        let field = e.get("field").and_then(text).unwrap_or_default();
                        let message = e.get("message").and_then(text).unwrap_or_default();
                        (field, message)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Problem {
            title: doc.get("title").and_then(text),
            detail: doc.get("detail").and_then(text),
            errors,
        })
        .filter(|p| p.title.is_some() || p.detail.is_some() || !p.errors.is_empty())
    }
}

/// `Conflict (409): saga ... is committed`: the title and detail the API gave, or the status.
fn refusal_line(status: StatusCode, problem: Option<&Problem>, body: &str) -> String {
    let reason = status.canonical_reason().unwrap_or("HTTP status");
    let title = problem.and_then(|p| p.title.as_deref()).unwrap_or(reason);
    let detail = problem.and_then(|p| p.detail.as_deref()).or(Some(body));
    match detail.filter(|d| !d.trim().is_empty()) {
        Some(detail) => format!(
            "{} ({}): {}",
            printable(title),
            status.as_u16(),
            printable(detail)
        ),
        None => format!("{} ({})", printable(title), status.as_u16()),
    }
}

impl Failure {
    pub fn outcome(&self) -> Outcome {
        match self {
            Failure::Setup(_) | Failure::Unparsable { .. } => Outcome::Unexpected,
            Failure::Unreachable { .. } => Outcome::Unreachable,
            Failure::Refused { status, .. } => match Outcome::of_status(*status) {
                // A 2xx is never refused; should one get here, it is no success.
                Outcome::Success => Outcome::Unexpected,
                outcome => outcome,
            },
        }
    }

    /// The lines for stderr: what failed, each broken rule, and what to do about it.
    pub fn report(&self) -> String {
        let mut lines = vec![format!("coordinator sagas: {self}")];
        if let Failure::Refused {
            problem: Some(problem),
            ..
        } = self
        {
            for (field, message) in &problem.errors {
                lines.push(format!("  {}: {}", printable(field), printable(message)));
            }
        }
        let hint = match self.outcome() {
            Outcome::Unauthorized => {
                Some("the coordinator wants its API token: set SAGA_API_TOKEN (or pass --token)")
            }
            Outcome::Unavailable => Some(
                "the coordinator is starting, or Postgres or RabbitMQ is unreachable: try again \
                 in a few seconds",
            ),
            Outcome::Unreachable => Some("is the coordinator running there? Set --url or SAGA_URL"),
            _ => None,
        };
        lines.extend(hint.map(|h| format!("hint: {h}")));
        lines.iter().map(|line| format!("{line}\n")).collect()
    }
}

impl Client {
    pub fn new(base: Url, token: Option<String>, timeout: Duration) -> Result<Client, Failure> {
        // No limit on a whole exchange here: an export streams for as long as it has sagas. A
        // single answer is bounded per request (`send`); every read waits at most `timeout`.
        let http = reqwest::Client::builder()
            .read_timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("coordinator-sagas/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Setup(e.to_string()))?;
        Ok(Client {
            http,
            base,
            token,
            timeout,
        })
    }

    /// `base/api/v1/{resource}/{path...}?{query}`; each path part is percent-encoded, so an id is
    /// always one segment whatever it holds.
    fn url(&self, request: &Request) -> Result<Url, Failure> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Failure::Setup(format!("{} cannot take a path", self.base)))?
            .pop_if_empty()
            .extend(["api", "v1", request.resource])
            .extend(&request.path);
        url.set_query(None);
        if !request.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in &request.query {
                pairs.append_pair(key, value);
            }
        }
        Ok(url)
    }

    /// Sends the request; a 2xx answer's JSON document, or why there is none.
    pub async fn send(&self, request: &Request) -> Result<Value, Failure> {
        let url = self.url(request)?;
        let builder = self.builder(request, &url).timeout(self.timeout);
        let unreachable = |e: reqwest::Error| self.unreachable(request, &url, &e);
        let response = builder.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(refused(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| Failure::Unparsable {
            method: request.method.to_string(),
            url: url.to_string(),
            reason: format!("{status} with a body that is not JSON ({e})"),
        })
    }

    /// Sends the request and answers a 2xx answer whose body is still to be read, as a
    /// [`Stream`]: for answers too long to hold (the export). Each read waits at most the
    /// timeout; the whole answer may take as long as it takes.
    pub async fn open<'a>(&'a self, request: &'a Request) -> Result<Stream<'a>, Failure> {
        let url = self.url(request)?;
        let response = self
            .builder(request, &url)
            .send()
            .await
            .map_err(|e| self.unreachable(request, &url, &e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .bytes()
                .await
                .map_err(|e| self.unreachable(request, &url, &e))?;
            return Err(refused(status, &body));
        }
        Ok(Stream {
            client: self,
            request,
            url,
            response,
        })
    }

    fn builder(&self, request: &Request, url: &Url) -> reqwest::RequestBuilder {
        let mut builder = self.http.request(request.method.clone(), url.clone());
        if let Some(token) = &self.token {
            builder = builder.bearer_auth(token);
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        builder
    }

    /// Why no answer came: a timeout, or the innermost cause (connection refused, unknown host).
    fn unreachable(&self, request: &Request, url: &Url, error: &reqwest::Error) -> Failure {
        if error.is_builder() {
            // Not the network: the request itself cannot be sent.
            return Failure::Setup(format!("the request cannot be built: {}", cause(error)));
        }
        let reason = if error.is_timeout() {
            format!(
                "no answer within {} s (--timeout-secs)",
                self.timeout.as_secs()
            )
        } else {
            cause(error)
        };
        Failure::Unreachable {
            base: self.base.to_string(),
            method: request.method.to_string(),
            url: url.to_string(),
            reason,
        }
    }
}

/// A 2xx answer being read (see [`Client::open`]).
pub struct Stream<'a> {
    client: &'a Client,
    request: &'a Request,
    url: Url,
    response: reqwest::Response,
}

impl Stream<'_> {
    /// The next part of the body as it arrives, `None` at its end; a connection that breaks or
    /// stays silent past the timeout is [`Failure::Unreachable`].
    pub async fn chunk(&mut self) -> Result<Option<impl AsRef<[u8]>>, Failure> {
        self.response
            .chunk()
            .await
            .map_err(|e| self.client.unreachable(self.request, &self.url, &e))
    }

    /// What the API promised and the body broke (`what` says how).
    pub fn unparsable(&self, what: &str) -> Failure {
        Failure::Unparsable {
            method: self.request.method.to_string(),
            url: self.url.to_string(),
            reason: what.to_owned(),
        }
    }
}

/// A non-2xx answer: its problem document, or the start of its body.
fn refused(status: StatusCode, body: &[u8]) -> Failure {
    let problem = Problem::parse(body);
    let excerpt = match problem {
        Some(_) => String::new(),
        None => String::from_utf8_lossy(body).chars().take(200).collect(),
    };
    Failure::Refused {
        status,
        problem,
        body: excerpt,
    }
}

/// The innermost error of a chain: "Connection refused (os error 111)" rather than reqwest's
/// "error sending request for url (...)".
fn cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use reqwest::Method;

    use super::*;

    fn client(base: &str) -> Client {
        let base = Url::parse(base).expect("a URL");
        Client::new(base, None, Duration::from_secs(1)).expect("a client")
    }

    fn request(path: &[&str], query: Vec<(&'static str, String)>) -> Request {
        Request {
            resource: "sagas",
            method: Method::GET,
            path: path.iter().map(|s| s.to_string()).collect(),
            query,
            body: None,
        }
    }

    #[test]
    fn paths_go_below_the_base_and_ids_stay_one_segment() {
        let at = |base: &str, path: &[&str]| {
            client(base)
                .url(&request(path, Vec::new()))
                .expect("a URL")
                .to_string()
        };
        assert_eq!(
            at("http://h:8080", &["x", "abort"]),
            "http://h:8080/api/v1/sagas/x/abort"
        );
        assert_eq!(
            at("http://h/saga/", &[]),
            "http://h/saga/api/v1/sagas",
            "a path prefix is kept"
        );
        assert_eq!(
            at("http://h/", &["../../healthz", "events"]),
            "http://h/api/v1/sagas/..%2F..%2Fhealthz/events"
        );
        assert_eq!(at("http://h/", &["a b?"]), "http://h/api/v1/sagas/a%20b%3F");
    }

    #[test]
    fn the_query_is_encoded_and_may_repeat() {
        let url = client("http://h/?stale=1")
            .url(&request(
                &[],
                vec![
                    ("state", "running".into()),
                    ("state", "failed".into()),
                    ("name", "a&b".into()),
                ],
            ))
            .expect("a URL");
        assert_eq!(
            url.as_str(),
            "http://h/api/v1/sagas?state=running&state=failed&name=a%26b"
        );
    }

    #[test]
    fn a_problem_is_reported_with_each_broken_rule() {
        let body = br#"{"type":"about:blank","title":"Invalid request","status":422,
            "detail":"the request breaks 1 rule(s)",
            "errors":[{"field":"note","message":"say what was repaired"}]}"#;
        let failure = Failure::Refused {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem: Problem::parse(body),
            body: String::new(),
        };
        assert_eq!(failure.outcome(), Outcome::Invalid);
        assert_eq!(
            failure.report(),
            "coordinator sagas: Invalid request (422): the request breaks 1 rule(s)\n  \
             note: say what was repaired\n"
        );
    }

    #[test]
    fn unauthorised_and_unavailable_say_what_to_do() {
        let refused = |status: StatusCode| Failure::Refused {
            status,
            problem: Problem::parse(
                br#"{"title":"Unauthorized","detail":"a valid bearer token is required"}"#,
            ),
            body: String::new(),
        };
        let report = refused(StatusCode::UNAUTHORIZED).report();
        assert!(report.contains("SAGA_API_TOKEN"), "{report}");
        assert_eq!(
            refused(StatusCode::UNAUTHORIZED).outcome(),
            Outcome::Unauthorized
        );
        let report = refused(StatusCode::SERVICE_UNAVAILABLE).report();
        assert!(report.contains("try again"), "{report}");
    }

    #[test]
    fn an_answer_that_is_no_problem_shows_its_start_and_status() {
        let failure = Failure::Refused {
            status: StatusCode::BAD_GATEWAY,
            problem: Problem::parse(b"<html>bad gateway</html>"),
            body: "<html>bad gateway</html>".into(),
        };
        assert_eq!(failure.outcome(), Outcome::Unexpected);
        assert_eq!(
            failure.report(),
            "coordinator sagas: Bad Gateway (502): <html>bad gateway</html>\n"
        );
        let empty = Failure::Refused {
            status: StatusCode::NOT_FOUND,
            problem: None,
            body: String::new(),
        };
        assert_eq!(empty.report(), "coordinator sagas: Not Found (404)\n");
        assert_eq!(empty.outcome(), Outcome::NotFound);
    }

    #[test]
    fn text_from_the_server_cannot_drive_the_terminal() {
        let failure = Failure::Refused {
            status: StatusCode::CONFLICT,
            problem: Problem::parse(
                br#"{"title":"Conflict","detail":"saga \u001b[31mx\nis failed"}"#,
            ),
            body: String::new(),
        };
        let report = failure.report();
        assert!(!report.contains('\u{1b}'), "{report:?}");
        assert_eq!(report.lines().count(), 1, "{report:?}");
    }
}
