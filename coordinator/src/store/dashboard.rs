//! Aggregate reads for the operator's dashboard: the in-flight sagas with their steps (the counts
//! per state and per minute are `state_counts.rs`).
//!
//! Each is one or two indexed queries, cheap enough to run on every live refresh of an overview.

use diesel::prelude::*;

use super::schema::sagas;
use super::{Queries, SagaRow, StoreError};
use crate::saga::{Saga, SagaState};

/// Which in-flight sagas to show.
#[derive(Debug, Clone, Default)]
pub struct InFlightFilter {
    /// Only these unfinished states (all of them when empty).
    pub states: Vec<SagaState>,
    /// Only sagas whose name contains this text (any case).
    pub name: Option<String>,
    pub limit: i64,
}

impl Queries {
    /// Unfinished sagas (prepared, running, compensating, failed) with their steps, newest first.
    pub fn in_flight(&self, filter: &InFlightFilter) -> Result<Vec<Saga>, StoreError> {
        let states: Vec<&str> = if filter.states.is_empty() {
            SagaState::ALL
                .iter()
                .filter(|s| !s.is_final())
                .map(|s| s.as_str())
                .collect()
        } else {
            filter
                .states
                .iter()
                .filter(|s| !s.is_final())
                .map(|s| s.as_str())
                .collect()
        };
        let mut conn = self.conn()?;
        let mut query = sagas::table
            .filter(sagas::state.eq_any(states))
            .into_boxed();
        if let Some(name) = filter.name.as_deref().filter(|n| !n.is_empty()) {
            query = query.filter(sagas::name.ilike(format!("%{}%", escape_like(name))));
        }
        let rows: Vec<SagaRow> = query
            .order(sagas::id.desc())
            .limit(filter.limit)
            .select(SagaRow::as_select())
            .load(&mut conn)?;
        self.assemble(&mut conn, rows)
    }
}

/// Makes `%`, `_` and `\` match themselves in a LIKE pattern.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(super::escape_like(r"a%b_c\d"), r"a\%b\_c\\d");
    }
}
