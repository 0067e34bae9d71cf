//! A list's page: its size (`limit`) and cursor as the query gives them, and the cursor of the
//! next page. The bulk actions' lists page forward; the sagas' list both ways ([`both_ways`]).

use uuid::Uuid;

use crate::store::Cursor;
use crate::submission::FieldError;

/// Page size of a list when `limit` is not given, and the largest one accepted.
pub(super) const DEFAULT_LIMIT: i64 = 50;
pub(super) const MAX_LIMIT: i64 = 500;

/// One broken rule of a request, for a 422.
pub(super) fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// A page's size and cursor, as the query gave them.
pub(super) struct Page {
    pub limit: i64,
    pub cursor: Option<Uuid>,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            limit: DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

impl Page {
    pub fn limit(&mut self, value: &str, errors: &mut Vec<FieldError>) {
        match value.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => self.limit = n,
            _ => errors.push(field_error(
                "limit",
                format!("must be an integer from 1 to {MAX_LIMIT}"),
            )),
        }
    }

    pub fn cursor(&mut self, key: &str, value: &str, errors: &mut Vec<FieldError>) {
        match Uuid::parse_str(value) {
            Ok(id) => self.cursor = Some(id),
            Err(_) => errors.push(field_error(key, "not a cursor from an earlier answer")),
        }
    }
}

/// The `next` cursor: the last id of a full page.
pub(super) fn page_end<T>(items: &[T], limit: i64, id: impl Fn(&T) -> Uuid) -> Option<String> {
    (items.len() as i64 == limit)
        .then(|| items.last().map(|item| id(item).to_string()))
        .flatten()
}

/// The cursors of a page of sagas read from `cursor` (`None`: the first page), newest first:
/// `(next, prev)`, `next` for the older page (pass it as `before`), `prev` for the newer one (as
/// `after`). Each is the id of the page's last or first saga; where the page is empty it is the
/// request's cursor moved by one, so that going back includes the saga at the cursor.
pub(super) fn both_ways(
    ids: &[Uuid],
    limit: i64,
    cursor: Option<Cursor>,
) -> (Option<String>, Option<String>) {
    let full = ids.len() as i64 == limit;
    let (first, last) = (ids.first().copied(), ids.last().copied());
    let (next, prev) = match cursor {
        // The newest sagas: nothing newer matched when they were read.
        None => (last.filter(|_| full), None),
        // Newer sagas exist: at least the cursor's.
        Some(Cursor::Before(id)) => (
            last.filter(|_| full),
            first.or(Some(Uuid::from_u128(id.as_u128().saturating_sub(1)))),
        ),
        // Older sagas exist: at least the cursor's. A page that is not full reached the newest.
        Some(Cursor::After(id)) => (
            last.or(Some(Uuid::from_u128(id.as_u128().saturating_add(1)))),
            first.filter(|_| full),
        ),
    };
    (next.map(|id| id.to_string()), prev.map(|id| id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_leads_to_older_sagas_and_prev_to_newer_ones() {
        let id = |n: u128| Uuid::from_u128(n);
        let s = |n: u128| Some(id(n).to_string());
        let page = [id(9), id(8), id(7)];
        // The first page: nothing newer; older ones only if it is full.
        assert_eq!(both_ways(&page, 3, None), (s(7), None));
        assert_eq!(both_ways(&page, 4, None), (None, None));
        // Older than a cursor: newer ones exist (the cursor's saga at least).
        let before = Some(Cursor::Before(id(10)));
        assert_eq!(both_ways(&page, 3, before), (s(7), s(9)));
        assert_eq!(both_ways(&page, 4, before), (None, s(9)));
        assert_eq!(both_ways(&[], 4, before), (None, s(9)));
        // Newer than a cursor: older ones exist; newer ones only if the page is full.
        let after = Some(Cursor::After(id(6)));
        assert_eq!(both_ways(&page, 3, after), (s(7), s(9)));
        assert_eq!(both_ways(&page, 4, after), (s(7), None));
        assert_eq!(both_ways(&[], 4, after), (s(7), None));
    }
}
