//! A check-back endpoint for two-phase tests (contract, section 5): a tiny HTTP server that answers
//! `GET /check?saga_id=...` from a script and records every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the endpoint answers: an HTTP status and a body.
#[derive(Clone, Debug)]
pub struct CheckAnswer {
    pub status: u16,
    pub body: String,
    /// Extra response headers (`Location`, ...).
    pub headers: Vec<(String, String)>,
    /// Whether to send `content-length`; without it the body ends when the connection closes.
    pub content_length: bool,
}

impl CheckAnswer {
    /// `200 {"outcome": outcome}`.
    pub fn outcome(outcome: &str) -> CheckAnswer {
        CheckAnswer {
            body: format!("{{\"outcome\": \"{outcome}\"}}"),
            ..CheckAnswer::status(200)
        }
    }

    pub fn status(status: u16) -> CheckAnswer {
        CheckAnswer {
            status,
            body: "{}".into(),
            headers: Vec::new(),
            content_length: true,
        }
    }

    /// `302` to `location`.
    pub fn redirect(location: &str) -> CheckAnswer {
        CheckAnswer {
            headers: vec![("location".into(), location.into())],
            ..CheckAnswer::status(302)
        }
    }

    /// `200 {"outcome": outcome, "padding": ...}` of `bytes` bytes or more: an answer the
    /// coordinator must not read to the end.
    pub fn oversized(outcome: &str, bytes: usize) -> CheckAnswer {
        CheckAnswer {
            body: format!(
                "{{\"outcome\": \"{outcome}\", \"padding\": \"{}\"}}",
                "x".repeat(bytes)
            ),
            ..CheckAnswer::status(200)
        }
    }
}

type Script = dyn Fn(&str, usize) -> CheckAnswer + Send + Sync;

/// The server; dropping it stops it.
pub struct CheckBackServer {
    addr: SocketAddr,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    task: JoinHandle<()>,
}

impl CheckBackServer {
    /// Answers the `n`th request (from 1) about saga `id` with `script(id, n)`.
    pub async fn start(
        script: impl Fn(&str, usize) -> CheckAnswer + Send + Sync + 'static,
    ) -> CheckBackServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the check-back server");
        let addr = listener.local_addr().expect("local address");
        let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let seen = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let script = script.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let target = text.split_whitespace().nth(1).unwrap_or("");
                    let saga_id = target
                        .split_once("saga_id=")
                        .map(|(_, rest)| rest.split('&').next().unwrap_or(""))
                        .unwrap_or("")
                        .to_string();
                    let n = {
                        let mut calls = seen.lock().expect("calls");
                        let n = calls.entry(saga_id.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    let answer = script(&saga_id, n);
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\nconnection: close\r\n",
                        answer.status
                    );
                    if answer.content_length {
                        head.push_str(&format!("content-length: {}\r\n", answer.body.len()));
                    }
                    for (name, value) in &answer.headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    let response = format!("{head}\r\n{}", answer.body);
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        CheckBackServer { addr, calls, task }
    }

    /// The URL to give as `check_back.url`.
    pub fn url(&self) -> String {
        format!("http://{}/check", self.addr)
    }

    /// How many times saga `id` was asked about.
    pub fn calls_for(&self, id: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for CheckBackServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
