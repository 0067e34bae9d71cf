//! `GET /dashboard/api/stream`: committed saga changes as server-sent events.
//!
//! Each event is `event: change` with the notice as JSON (id, name, state, time), whichever
//! coordinator committed it. A reader that fell too far behind, or whose coordinator missed other
//! coordinators' notices, gets one `event: resync` and should reload what it shows. A comment line
//! every few seconds keeps proxies from closing an idle stream and lets a closed browser tab be
//! noticed.

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::HttpResponse;
use futures_util::stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::sync::watch;

use crate::runtime::changes::ChangeNotice;
use crate::web::state::AppState;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn changes(state: web::Data<AppState>) -> HttpResponse {
    let receiver = state.changes.subscribe();
    let closing = state.changes.closing();
    // `retry`: how long the browser waits before reconnecting after the stream ends.
    let hello = stream::once(async {
        Ok::<_, actix_web::Error>(Bytes::from_static(
            b"retry: 2000\nevent: hello\ndata: {}\n\n",
        ))
    });
    let events = stream::unfold(Some((receiver, closing)), next_event);
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures_util::StreamExt::chain(hello, events))
}

type Readers = (Receiver<ChangeNotice>, watch::Receiver<bool>);

async fn next_event(
    readers: Option<Readers>,
) -> Option<(Result<Bytes, actix_web::Error>, Option<Readers>)> {
    let (mut receiver, mut closing) = readers?;
    let next = tokio::select! {
        // The coordinator is stopping: end the stream (the browser reconnects to the next one).
        _ = closing.wait_for(|c| *c) => return None,
        next = tokio::time::timeout(KEEP_ALIVE, receiver.recv()) => next,
    };
    let frame = match next {
        Err(_) => Bytes::from_static(b": keep-alive\n\n"),
        Ok(Ok(ChangeNotice::Committed(change) | ChangeNotice::Relayed(change))) => {
            match serde_json::to_string(&change) {
                Ok(json) => Bytes::from(format!("event: change\ndata: {json}\n\n")),
                Err(_) => Bytes::from_static(b"event: resync\ndata: {}\n\n"),
            }
        }
        Ok(Ok(ChangeNotice::Resync) | Err(RecvError::Lagged(_))) => {
            Bytes::from_static(b"event: resync\ndata: {}\n\n")
        }
        // The coordinator is stopping: end the stream.
        Ok(Err(RecvError::Closed)) => return None,
    };
    Some((Ok(frame), Some((receiver, closing))))
}
