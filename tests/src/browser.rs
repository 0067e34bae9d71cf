//! Headless Chromium driven over WebDriver (`chromedriver` + the `fantoccini` client), for the
//! dashboard's browser tests.
//!
//! Each [`Browser`] runs its own `chromedriver` on a free port, so tests can run in parallel. The
//! binaries are found at `/usr/bin/chromium` and `/usr/bin/chromedriver` (what Debian's `chromium`
//! and `chromium-driver` install, and what `.ci/run` installs), or where `E2E_CHROMIUM` and
//! `E2E_CHROMEDRIVER` say.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::wait::POLL;

/// A headless Chromium session and the chromedriver behind it.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver and opens a headless browser window of `width` × `height` pixels.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        let driver_path =
            std::env::var("E2E_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium_path =
            std::env::var("E2E_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("cannot run {driver_path} (apt-get install chromium chromium-driver)")
            })?;
        let mut browser = Browser {
            client: None,
            driver,
        };
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while !http
            .get(format!("{url}/status"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("chromedriver did not answer on {url} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium_path,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .context("opening a Chromium session")?;
        client
            .set_window_size(width, height)
            .await
            .context("sizing the window")?;
        browser.client = Some(client);
        Ok(browser)
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    pub async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client()
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("running {script:?}: {e}"))
    }

    /// Polls `script` until it returns something other than `null`, `false`, `""` or `undefined`,
    /// and returns that; panics after `timeout` naming `what`.
    pub async fn wait_js(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.client().execute(script, Vec::new()).await;
            if let Ok(v) = &value {
                if !(v.is_null() || *v == json!(false) || *v == json!("")) {
                    return v.clone();
                }
            }
            if started.elapsed() > timeout {
                let page = self.js("return document.body.innerText").await;
                panic!(
                    "timed out after {timeout:?} waiting for {what} (last: {value:?}); page text:\n{}",
                    page.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL * 4).await;
        }
    }

    /// Clicks the first element matching the CSS selector, waiting for it to exist. A live page may
    /// redraw between finding the element and clicking it (a stale element): find it again.
    pub async fn click(&self, css: &str, timeout: Duration) {
        let start = std::time::Instant::now();
        loop {
            let element = self
                .client()
                .wait()
                .at_most(timeout)
                .for_element(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no element {css:?}: {e}"));
            match element.click().await {
                Ok(_) => return,
                Err(e) if e.to_string().contains("stale element") && start.elapsed() < timeout => {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => panic!("clicking {css:?}: {e}"),
            }
        }
    }

    /// Types into the first element matching the CSS selector.
    pub async fn type_into(&self, css: &str, text: &str, timeout: Duration) {
        let element = self
            .client()
            .wait()
            .at_most(timeout)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css:?}: {e}"));
        element
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into {css:?}: {e}"));
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client()
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("taking a screenshot: {e}"))
    }

    /// Ends the session (closing Chromium) and stops chromedriver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
        let _ = self.driver.kill().await;
    }
}
