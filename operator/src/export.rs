//! `coordinator sagas export`: every saga a filter matches as JSON lines
//! (`GET /api/v1/sagas/export`), written to stdout or a file as the answer streams in, for
//! archiving what retention will remove.
//!
//! Only whole lines are written, so a file left by a broken transfer holds complete sagas; the
//! report then names the last one, which `--after` takes to resume.

use std::fs::File;
use std::io::{BufWriter, ErrorKind, Write};
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use crate::client::Client;
use crate::filters::SharedFilters;
use crate::outcome::Outcome;
use crate::request::Request;
use crate::table::printable;

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub filters: SharedFilters,

    /// Only sagas after this id (ids are in creation order): the last id of an export that broke
    /// off, to resume it.
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,

    /// Write the lines to this file (created or truncated once the coordinator accepted the
    /// request) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl ExportArgs {
    /// The filters passed to the API as they are: it checks them (exit code 7).
    pub(crate) fn request(&self) -> Request {
        let mut query = self.filters.query();
        query.extend(self.after.clone().map(|v| ("after", v)));
        Request {
            query,
            ..Request::get(&["export"])
        }
    }

    /// Where the lines go, as the report names it.
    fn destination(&self) -> String {
        match &self.output {
            Some(path) => path.display().to_string(),
            None => "stdout".into(),
        }
    }
}

/// Lines written so far, and the last of them (for the resume hint).
#[derive(Default)]
struct Written {
    count: u64,
    last: Vec<u8>,
}

impl Written {
    fn last_id(&self) -> Option<String> {
        let line: Value = serde_json::from_slice(&self.last).ok()?;
        line.get("id").and_then(Value::as_str).map(str::to_owned)
    }
}

/// Runs the export: the lines to stdout or `--output`, the count to stderr.
pub(crate) async fn run(client: &Client, args: &ExportArgs) -> Outcome {
    let request = args.request();
    let mut stream = match client.open(&request).await {
        Ok(stream) => stream,
        Err(failure) => {
            eprint!("{}", failure.report());
            return failure.outcome();
        }
    };
    let mut out: BufWriter<Box<dyn Write>> = match &args.output {
        Some(path) => match File::create(path) {
            Ok(file) => BufWriter::new(Box::new(file)),
            Err(e) => {
                eprintln!("coordinator sagas: cannot create {}: {e}", path.display());
                return Outcome::Unexpected;
            }
        },
        None => BufWriter::new(Box::new(std::io::stdout())),
    };
    let mut written = Written::default();
    // The part of a line that arrived without its end yet.
    let mut pending: Vec<u8> = Vec::new();
    let broken = loop {
        let chunk = match stream.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) if pending.is_empty() => break None,
            Ok(None) => break Some(stream.unparsable("the last line has no end")),
            Err(failure) => break Some(failure),
        };
        pending.extend_from_slice(chunk.as_ref());
        let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let lines: Vec<u8> = pending.drain(..=end).collect();
        if let Err(e) = out.write_all(&lines) {
            return write_failed(&e, args, &written);
        }
        written.count += lines.iter().filter(|&&b| b == b'\n').count() as u64;
        let start = lines[..end]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        written.last = lines[start..end].to_vec();
    };
    if let Err(e) = out.flush() {
        return write_failed(&e, args, &written);
    }
    match broken {
        None => {
            eprintln!(
                "coordinator sagas: exported {} saga(s) to {}",
                written.count,
                args.destination()
            );
            Outcome::Success
        }
        Some(failure) => {
            eprint!("{}", failure.report());
            eprintln!(
                "coordinator sagas: the export broke off after {} saga(s) written to {}, each \
                 line complete",
                written.count,
                args.destination()
            );
            if let Some(id) = written.last_id() {
                eprintln!(
                    "hint: resume with --after {} (and the same filters)",
                    printable(&id)
                );
            }
            failure.outcome()
        }
    }
}

/// A reader that went away (`| head`) is not a failure, as for every verb; any other write error
/// is.
fn write_failed(error: &std::io::Error, args: &ExportArgs, written: &Written) -> Outcome {
    if error.kind() == ErrorKind::BrokenPipe {
        return Outcome::Success;
    }
    eprintln!(
        "coordinator sagas: cannot write to {} after {} saga(s): {error}",
        args.destination(),
        written.count
    );
    Outcome::Unexpected
}

#[cfg(test)]
mod tests {
    use reqwest::Method;

    use super::*;

    #[test]
    fn export_passes_every_filter_as_the_api_names_it() {
        let request = ExportArgs {
            filters: SharedFilters {
                states: vec!["committed".into(), "aborted".into()],
                name: Some("place-order".into()),
                finished_after: Some("2026-01-01T00:00:00Z".into()),
                finished_before: Some("2026-02-01T00:00:00Z".into()),
            },
            after: Some("id-1".into()),
            output: Some("archive.jsonl".into()),
        }
        .request();
        assert_eq!(request.method, Method::GET);
        assert_eq!(request.resource, "sagas");
        assert_eq!(request.path, ["export"]);
        assert_eq!(
            request.query,
            [
                ("state", "committed".to_string()),
                ("state", "aborted".to_string()),
                ("name", "place-order".to_string()),
                ("finished_after", "2026-01-01T00:00:00Z".to_string()),
                ("finished_before", "2026-02-01T00:00:00Z".to_string()),
                ("after", "id-1".to_string()),
            ]
        );
    }

    #[test]
    fn the_last_line_names_the_saga_to_resume_after() {
        let written = Written {
            count: 2,
            last: br#"{"id":"0190a000-0000-7000-8000-000000000001","events":[]}"#.to_vec(),
        };
        assert_eq!(
            written.last_id().as_deref(),
            Some("0190a000-0000-7000-8000-000000000001")
        );
        assert_eq!(Written::default().last_id(), None);
    }
}
