//! The filters `sagas list` and `sagas export` share, as the API names them (`state`, `name`,
//! `finished_after`, `finished_before`). Passed on as they are: the API checks them (exit code 7).

use clap::Args;

#[derive(Debug, Default, Args)]
pub struct SharedFilters {
    /// Only sagas in this state (repeat for several): prepared, running, compensating, committed,
    /// compensated, aborted, failed.
    #[arg(long = "state", value_name = "STATE")]
    pub states: Vec<String>,

    /// Only sagas of this name (their kind, e.g. place-order).
    #[arg(long)]
    pub name: Option<String>,

    /// Only sagas that finished (committed, compensated, aborted) at or after this time, RFC 3339
    /// (e.g. 2026-01-01T00:00:00Z). Sagas not finished never match.
    #[arg(long, value_name = "TIME")]
    pub finished_after: Option<String>,

    /// Only sagas that finished strictly before this time, RFC 3339. Sagas not finished never
    /// match.
    #[arg(long, value_name = "TIME")]
    pub finished_before: Option<String>,
}

impl SharedFilters {
    /// The query parameters, in this order: every `state`, then the others that are set.
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut query: Vec<(&'static str, String)> =
            self.states.iter().map(|s| ("state", s.clone())).collect();
        query.extend(optional(&[
            ("name", &self.name),
            ("finished_after", &self.finished_after),
            ("finished_before", &self.finished_before),
        ]));
        query
    }
}

/// The parameters whose value is set, in order.
pub(crate) fn optional(params: &[(&'static str, &Option<String>)]) -> Vec<(&'static str, String)> {
    params
        .iter()
        .filter_map(|&(param, value)| value.clone().map(|v| (param, v)))
        .collect()
}
