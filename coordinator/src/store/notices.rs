//! Change notices between coordinators sharing a database, over Postgres `LISTEN`/`NOTIFY`: the
//! database side of `runtime/change_feed.rs`, in plain types.
//!
//! A notice is a JSON payload on [`CHANNEL`]: the sending instance's id, the changes it committed
//! (whatever serializable type the caller uses) and whether some were missed. Postgres refuses a
//! payload of 8000 bytes or more, so [`payloads`] splits a long list into several. A listener
//! ignores its own instance's notices: those changes were already announced where they committed.
//! `LISTEN`/`NOTIFY` is scoped to one database, so the channel name needs no qualifier.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, Text};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Queries, StoreError};

/// The notification channel of change notices.
pub const CHANNEL: &str = "saga_changes";

/// Largest payload sent; Postgres's own limit is just under 8000 bytes.
pub const MAX_PAYLOAD_BYTES: usize = 7900;

/// What a payload says, as sent (`changes` and `resync` are left out when empty and false).
#[derive(Deserialize)]
struct Envelope<T> {
    from: String,
    #[serde(default = "Vec::new")]
    changes: Vec<T>,
    #[serde(default)]
    resync: bool,
}

/// What a listener heard from the other instances since it last looked.
#[derive(Debug, PartialEq)]
pub struct Heard<T> {
    /// Their changes, in the order they were sent.
    pub changes: Vec<T>,
    /// Some changes cannot be told (a sender's feed lagged, a notice was unreadable): views should
    /// reload.
    pub resync: bool,
}

impl<T> Default for Heard<T> {
    fn default() -> Self {
        Heard {
            changes: Vec::new(),
            resync: false,
        }
    }
}

/// The payloads that tell `changes` (and, with `missed`, that some were lost) as instance `from`:
/// as few as fit under [`MAX_PAYLOAD_BYTES`], none when there is nothing to tell. A change too big
/// for a payload of its own is told as missed.
pub fn payloads<T: Serialize>(from: &str, changes: &[T], missed: bool) -> Vec<String> {
    let head = head(from);
    // Room for the longer ending is kept in every payload, so any of them may turn out to be last.
    const END: &str = "]}";
    const END_MISSED: &str = "],\"resync\":true}";
    let room = MAX_PAYLOAD_BYTES.saturating_sub(head.len() + END_MISSED.len());
    let mut missed = missed;
    let mut sent = Vec::new();
    let mut current = head.clone();
    let mut in_current = 0usize;
    for change in changes {
        let item = match serde_json::to_string(change) {
            Ok(item) if item.len() <= room => item,
            _ => {
                missed = true;
                continue;
            }
        };
        let used = current.len() - head.len();
        if in_current > 0 && used + 1 + item.len() > room {
            current.push_str(END);
            sent.push(std::mem::replace(&mut current, head.clone()));
            in_current = 0;
        }
        if in_current > 0 {
            current.push(',');
        }
        current.push_str(&item);
        in_current += 1;
    }
    if in_current > 0 || missed {
        current.push_str(if missed { END_MISSED } else { END });
        sent.push(current);
    }
    sent
}

/// How every payload of instance `from` begins.
fn head(from: &str) -> String {
    let from = serde_json::Value::String(from.to_owned()).to_string();
    format!("{{\"from\":{from},\"changes\":[")
}

/// Reads one payload into `heard`, unless `me_first` (the [`head`] of this instance's own
/// payloads) shows this instance sent it.
fn read<T: DeserializeOwned>(payload: &str, me_first: &str, heard: &mut Heard<T>) {
    // Our own notices are as many as everyone else's together: not worth parsing.
    if payload.starts_with(me_first) {
        return;
    }
    match serde_json::from_str::<Envelope<T>>(payload) {
        Ok(envelope) if me_first == head(&envelope.from) => {}
        Ok(envelope) => {
            heard.changes.extend(envelope.changes);
            heard.resync |= envelope.resync;
        }
        Err(e) => {
            // From another build, or cut short: what it told is unknown.
            log::debug!("unreadable change notice ({e}): {payload:.200}");
            heard.resync = true;
        }
    }
}

impl Queries {
    /// Sends `payloads` on [`CHANNEL`] in one statement (one transaction: they arrive together).
    pub fn notify_changes(&self, payloads: &[String]) -> Result<(), StoreError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        diesel::sql_query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
            .bind::<Text, _>(CHANNEL)
            .bind::<Array<Text>, _>(payloads)
            .execute(&mut conn)?;
        Ok(())
    }
}

/// A connection of its own that listens on [`CHANNEL`] for the notices of other instances. It
/// blocks: it belongs on a thread of its own.
pub struct NoticeListener {
    conn: PgConnection,
    /// How this instance's own payloads begin.
    me_first: String,
}

impl NoticeListener {
    /// Connects and listens; notices sent before this returns are not heard.
    pub fn connect(database_url: &str, me: &str) -> Result<NoticeListener, StoreError> {
        let mut conn = PgConnection::establish(database_url)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        conn.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(NoticeListener {
            conn,
            me_first: head(me),
        })
    }

    /// What arrived since the last call, without waiting; an error means the connection is lost
    /// (notices may have been missed).
    pub fn poll<T: DeserializeOwned>(&mut self) -> Result<Heard<T>, StoreError> {
        let mut heard = Heard::default();
        for notification in self.conn.notifications_iter() {
            let notification = notification?;
            if notification.channel == CHANNEL {
                read(&notification.payload, &self.me_first, &mut heard);
            }
        }
        Ok(heard)
    }

    /// Asks the server something: a connection that was closed by the server shows itself when
    /// polled, but one that died without a word (a restarted host) only when used.
    pub fn check(&mut self) -> Result<(), StoreError> {
        self.conn.batch_execute("SELECT 1")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};
    use testkit::TestDb;

    use super::*;
    use crate::store::test_db::SCHEMA;

    fn change(i: usize) -> Value {
        let id = format!("0190b1e2-0000-7000-8000-{i:012}");
        json!({"id": id, "name": "place-order", "state": "running"})
    }

    /// Polls until something was heard or a generous time passed (notices cross processes).
    fn hear(listener: &mut NoticeListener) -> Heard<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let heard = listener.poll().expect("the listener's connection");
            if heard != Heard::default() || Instant::now() > deadline {
                return heard;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_notice_reaches_the_other_instances_and_not_its_sender() {
        let db = TestDb::new(SCHEMA);
        let pool = crate::store::pool(db.url(), 1).expect("pool");
        let queries = Queries::new(pool);
        let mut a = NoticeListener::connect(db.url(), "a").expect("a listens");
        let mut b = NoticeListener::connect(db.url(), "b").expect("b listens");

        let sent = [change(1), change(2)];
        queries
            .notify_changes(&payloads("a", &sent, false))
            .expect("sent");
        let heard = hear(&mut b);
        assert_eq!(heard.changes, sent.to_vec());
        assert!(!heard.resync);

        // Whatever b sends next is what a hears first: a's own notice was not echoed to it.
        queries
            .notify_changes(&payloads("b", &[] as &[Value], true))
            .expect("sent");
        let heard = hear(&mut a);
        assert_eq!(
            heard,
            Heard {
                changes: vec![],
                resync: true
            }
        );
        a.check().expect("still connected");
        assert_eq!(a.poll::<Value>().expect("polled"), Heard::default());
        assert_eq!(b.poll::<Value>().expect("polled"), Heard::default());
    }

    #[test]
    fn a_batch_bigger_than_one_payload_is_split_and_arrives_whole_and_in_order() {
        let sent: Vec<Value> = (0..300).map(change).collect();
        let chunks = payloads("a", &sent, false);
        assert!(chunks.len() > 1, "{} bytes fit in one", chunks[0].len());
        assert!(chunks.iter().all(|c| c.len() <= MAX_PAYLOAD_BYTES));
        assert!(chunks.iter().all(|c| !c.contains("resync")));

        let db = TestDb::new(SCHEMA);
        let queries = Queries::new(crate::store::pool(db.url(), 1).expect("pool"));
        let mut b = NoticeListener::connect(db.url(), "b").expect("b listens");
        queries.notify_changes(&chunks).expect("sent");
        let mut heard = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while heard.len() < sent.len() && Instant::now() < deadline {
            heard.extend(hear(&mut b).changes);
        }
        assert_eq!(heard, sent);
    }

    #[test]
    fn nothing_to_tell_is_no_payload_and_a_change_too_big_is_told_as_missed() {
        assert!(payloads::<Value>("a", &[], false).is_empty());
        let huge = json!({"name": "x".repeat(MAX_PAYLOAD_BYTES)});
        let chunks = payloads("a", &[change(1), huge], false);
        assert_eq!(chunks.len(), 1);
        let mut heard = Heard::default();
        read::<Value>(&chunks[0], &head("b"), &mut heard);
        assert_eq!(heard.changes, vec![change(1)]);
        assert!(heard.resync);
    }

    #[test]
    fn an_unreadable_notice_means_reload() {
        let mut heard = Heard::<Value>::default();
        read("{not json", &head("b"), &mut heard);
        assert!(heard.resync && heard.changes.is_empty());
    }
}
