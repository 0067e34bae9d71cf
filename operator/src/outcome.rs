//! What a verb's request came to, as the process's exit code: scripts branch on it without parsing
//! messages.

use reqwest::StatusCode;

/// Every exit code of `coordinator sagas`. The numbers are part of the command line's contract
/// (README, "Command line"; [`EXIT_CODES`]): never renumber one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The coordinator did it (2xx).
    Success,
    /// Anything else: an unexpected status, an answer that is not what the API documents.
    Unexpected,
    /// The command line itself was wrong: clap reports it and exits, or `run` finds the token
    /// unusable; nothing is sent.
    Usage,
    /// 404: no such saga (or, for a coordinator older than the verb, no such route).
    NotFound,
    /// 409: the saga's state does not allow it.
    Conflict,
    /// 401: the API wants a token, and this one is missing or wrong.
    Unauthorized,
    /// No answer: connection refused, unknown host, timed out.
    Unreachable,
    /// 400 or 422: the request broke a rule of the API (each broken rule is printed).
    Invalid,
    /// 503: the coordinator is starting, or Postgres or RabbitMQ is away; worth retrying.
    Unavailable,
}

impl Outcome {
    /// What an HTTP answer means for the operator.
    pub fn of_status(status: StatusCode) -> Outcome {
        match status.as_u16() {
            200..=299 => Outcome::Success,
            404 => Outcome::NotFound,
            409 => Outcome::Conflict,
            401 => Outcome::Unauthorized,
            400 | 422 => Outcome::Invalid,
            503 => Outcome::Unavailable,
            _ => Outcome::Unexpected,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Unexpected => 1,
            Outcome::Usage => 2,
            Outcome::NotFound => 3,
            Outcome::Conflict => 4,
            Outcome::Unauthorized => 5,
            Outcome::Unreachable => 6,
            Outcome::Invalid => 7,
            Outcome::Unavailable => 8,
        }
    }
}

impl From<Outcome> for std::process::ExitCode {
    fn from(outcome: Outcome) -> Self {
        std::process::ExitCode::from(outcome.code())
    }
}

/// The exit codes as `--help` shows them (kept beside the enum; a test checks they agree).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  anything else: an unexpected status or an answer that is not the API's
  2  usage error (this command line is wrong; nothing was sent)
  3  not found: no such saga (404)
  4  conflict: the saga's state does not allow it (409)
  5  unauthorised: set SAGA_API_TOKEN or --token (401)
  6  unreachable: no answer from --url (connection refused, unknown host, timeout)
  7  invalid request: the API refused a value (400, 422); each broken rule is printed
  8  unavailable: the coordinator is starting, or Postgres or RabbitMQ is down; retry (503)";

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Outcome; 9] = [
        Outcome::Success,
        Outcome::Unexpected,
        Outcome::Usage,
        Outcome::NotFound,
        Outcome::Conflict,
        Outcome::Unauthorized,
        Outcome::Unreachable,
        Outcome::Invalid,
        Outcome::Unavailable,
    ];

    #[test]
    fn statuses_map_to_the_documented_codes() {
        let cases = [
            (200, 0),
            (201, 0),
            (404, 3),
            (409, 4),
            (401, 5),
            (400, 7),
            (422, 7),
            (503, 8),
            (403, 1),
            (405, 1),
            (413, 1),
            (500, 1),
            (502, 1),
            (302, 1),
        ];
        for (status, code) in cases {
            let status = StatusCode::from_u16(status).expect("a valid status");
            assert_eq!(Outcome::of_status(status).code(), code, "{status}");
        }
    }

    #[test]
    fn every_code_is_distinct_and_documented_in_help() {
        let codes: Vec<u8> = ALL.iter().map(|o| o.code()).collect();
        assert_eq!(codes, (0..=8).collect::<Vec<u8>>(), "one outcome per code");
        for code in codes {
            assert!(
                EXIT_CODES.contains(&format!("\n  {code}  ")),
                "exit code {code} is missing from --help: {EXIT_CODES}"
            );
        }
    }
}
