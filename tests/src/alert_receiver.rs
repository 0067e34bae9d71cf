//! A receiver for the coordinator's alerts (`SAGA_ALERT_URL`): a small HTTP server that answers
//! from a script and records every request it read, headers and body.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as received.
#[derive(Clone, Debug)]
pub struct ReceivedAlert {
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The raw body (the signature is over these bytes).
    pub raw: Vec<u8>,
    pub body: Value,
    /// The status it was answered.
    pub status: u16,
}

impl ReceivedAlert {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// The server; dropping it stops it.
pub struct AlertReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<ReceivedAlert>>>,
    task: JoinHandle<()>,
}

impl AlertReceiver {
    /// Answers the `n`th request (from 1) with the status `script(n)`.
    pub async fn start(script: impl Fn(usize) -> u16 + Send + Sync + 'static) -> AlertReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the alert receiver");
        let addr = listener.local_addr().expect("local address");
        let received: Arc<Mutex<Vec<ReceivedAlert>>> = Arc::default();
        let script = Arc::new(script);
        let seen = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (script, seen) = (script.clone(), seen.clone());
                tokio::spawn(async move {
                    let Some((headers, raw)) = read_request(&mut stream).await else {
                        return;
                    };
                    let status = {
                        let mut seen = seen.lock().expect("received");
                        let status = script(seen.len() + 1);
                        seen.push(ReceivedAlert {
                            headers,
                            body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                            raw,
                            status,
                        });
                        status
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        AlertReceiver {
            addr,
            received,
            task,
        }
    }

    /// The URL to give as `SAGA_ALERT_URL`.
    pub fn url(&self) -> String {
        format!("http://{}/alerts", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedAlert> {
        self.received.lock().expect("received").clone()
    }
}

impl Drop for AlertReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request: its headers and a body of `content-length` bytes.
pub(crate) async fn read_request(
    stream: &mut tokio::net::TcpStream,
) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    Some((headers, request[head_end..head_end + length].to_vec()))
}
