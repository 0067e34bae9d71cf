//! The operator's dashboard: in headless Chromium (live updates, the saga page, abort, retry, retry
//! now, escaping, the README's screenshot, the history search, the attempts picture), and over
//! plain HTTP (cookie login, cross-site protection, the change stream, the dead letters).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::api::{expect_json, state};
use e2e::defs::{fast_retry, saga, step, step_with};
use e2e::scenarios::{
    broken_compensation_saga, broken_compensation_shop, flaky_participant, gated_participant,
    patient_saga,
};
use e2e::{Behaviour, Browser, FakeParticipant, TestApp, SAGA_TIMEOUT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

/// What a browser needs to find an element that the page builds.
const UI_TIMEOUT: Duration = Duration::from_secs(30);

/// Text that would run if the page ever treated saga data as markup.
const HOSTILE: &str = "<script>window.__xss = 1; document.title = 'pwned';</script>\
                       <img src=x onerror=\"window.__xss = 2; document.title = 'pwned'\">";

/// A step that waits on `participant` for ten minutes.
fn slow_step(name: &str, participant: &str) -> Value {
    step_with(name, participant, json!({"timeout_ms": 600000}))
}

/// JS: the overview shows saga `id` in its table `table` (`in-flight` or `finished`) in `state`.
fn row_in_state(table: &str, id: &str, state: &str) -> String {
    format!(
        "const r = document.querySelector('#{table} tr[data-saga-id=\"{id}\"]'); \
         return r !== null && r.dataset.state === '{state}';"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_sagas_live_and_operates_them() {
    let app = TestApp::start().await;
    let base = app.api.base_url.clone();

    // `warehouse` holds its actions until released; `hold` never answers an action but undoes at
    // once; `shop` cannot undo until fixed.
    let (release, released) = watch::channel(false);
    let _warehouse = FakeParticipant::start(&app.ns, "warehouse", move |cmd| {
        let mut released = released.clone();
        let output = json!({"label": HOSTILE, "parcel": cmd.step()});
        Behaviour::after(
            async move {
                let _ = released.wait_for(|r| *r).await;
            },
            Behaviour::success_with(output),
        )
    })
    .await;
    let _hold = FakeParticipant::start(&app.ns, "hold", |cmd| {
        if cmd.is_action() {
            Behaviour::NoReply
        } else {
            Behaviour::success()
        }
    })
    .await;
    let fixed = Arc::new(AtomicBool::new(false));
    let _shop = broken_compensation_shop(&app, fixed.clone()).await;

    let browser = Browser::start(1440, 1000).await.expect("starting Chromium");
    browser.goto(&format!("{base}/")).await;
    browser
        .wait_js(
            "the overview and its live stream",
            UI_TIMEOUT,
            "return document.querySelector('#in-flight') && \
             document.getElementById('live').classList.contains('on');",
        )
        .await;
    // Set once: still there at the end proves the page never reloaded.
    browser
        .js("window.__sameDocument = 'yes'; return true;")
        .await;

    // A saga appears and changes state without a reload.
    let shipped = app
        .submit_id(&saga("ship-order", vec![step("pick", "warehouse")]))
        .await;
    browser
        .wait_js(
            "the new saga in the in-flight list",
            SAGA_TIMEOUT,
            &row_in_state("in-flight", &shipped, "running"),
        )
        .await;
    release.send_replace(true);
    browser
        .wait_js(
            "the saga among the finished ones, committed",
            SAGA_TIMEOUT,
            &row_in_state("finished", &shipped, "committed"),
        )
        .await;
    for n in 0..3 {
        let mut more = saga("ship-order", vec![step("pick", "warehouse")]);
        more["key"] = json!(format!("order-{n}"));
        let id = app.submit_id(&more).await;
        app.wait_for_state(&id, &["committed"], SAGA_TIMEOUT).await;
    }

    // A failed saga stands out.
    let failed = app.submit_id(&broken_compensation_saga()).await;
    app.wait_for_state(&failed, &["failed"], SAGA_TIMEOUT).await;
    browser
        .wait_js(
            "the failed saga, marked as needing attention",
            SAGA_TIMEOUT,
            &format!(
                "const r = document.querySelector('#in-flight tr[data-saga-id=\"{failed}\"]'); \
                 return r && r.dataset.state === 'failed' && r.classList.contains('attention') \
                   && document.querySelector('#attention .banner') !== null;"
            ),
        )
        .await;

    // A saga whose data is hostile, and one to abort.
    let mut hostile = saga(
        "label-printing",
        vec![step("print", "warehouse"), slow_step("wait", "hold")],
    );
    hostile["steps"][1]["after"] = json!(["print"]);
    hostile["payload"] = json!({"note": HOSTILE});
    hostile["key"] = json!(HOSTILE);
    let hostile = app.submit_id(&hostile).await;
    let to_abort = app
        .submit_id(&saga("place-order", vec![slow_step("reserve", "hold")]))
        .await;
    for id in [&hostile, &to_abort] {
        browser
            .wait_js(
                "the running sagas in the list",
                SAGA_TIMEOUT,
                &format!(
                    "const r = document.querySelector('#in-flight tr[data-saga-id=\"{id}\"]'); \
                     return r && r.dataset.state === 'running';"
                ),
            )
            .await;
    }
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    // Under the target folder on every run; the README's picture only when asked to refresh it, so
    // a test run leaves the tracked tree as it found it.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, &png).expect("writing the screenshot under the target folder");
    if std::env::var("E2E_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
        std::fs::write(&docs, &png).expect("writing docs/dashboard.png");
    }

    // Open a saga's page from the list and abort it, with confirmation.
    browser
        .click(
            &format!("#in-flight tr[data-saga-id=\"{to_abort}\"] td.name a"),
            UI_TIMEOUT,
        )
        .await;
    browser
        .wait_js(
            "the saga page of the running saga",
            UI_TIMEOUT,
            "const s = document.getElementById('saga-state'); \
             return s && s.textContent === 'running' && document.getElementById('action-abort');",
        )
        .await;
    browser.click("#action-abort", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the confirmation dialog",
            UI_TIMEOUT,
            "return document.getElementById('confirm').open;",
        )
        .await;
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the aborted saga compensated, live",
            SAGA_TIMEOUT,
            "const s = document.getElementById('saga-state'); return s && s.textContent === 'compensated';",
        )
        .await;
    assert_eq!(state(&app.saga(&to_abort).await), "compensated");
    let log = browser
        .js("return [...document.querySelectorAll('#timeline li')].map(li => li.dataset.type);")
        .await;
    assert!(
        log.as_array().is_some_and(|l| l.len() >= 3),
        "the event log is shown as a timeline: {log}"
    );

    // Retry the failed saga once its participant is repaired.
    browser.click("a[href='/']", UI_TIMEOUT).await;
    browser
        .click(
            &format!("#in-flight tr[data-saga-id=\"{failed}\"] td.name a"),
            UI_TIMEOUT,
        )
        .await;
    browser
        .wait_js(
            "the failed saga's page",
            UI_TIMEOUT,
            "const s = document.getElementById('saga-state'); \
             return s && s.textContent === 'failed' && document.getElementById('action-retry') \
               && document.getElementById('saga-attention');",
        )
        .await;
    let error = browser
        .js("return document.querySelector('#steps tr[data-step=\"s1\"] td.error').textContent;")
        .await;
    assert!(
        error
            .as_str()
            .is_some_and(|e| e.contains("the undo is broken")),
        "the step's last error: {error}"
    );
    fixed.store(true, Ordering::SeqCst);
    browser.click("#action-retry", UI_TIMEOUT).await;
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the retried saga compensated, live",
            SAGA_TIMEOUT,
            "const s = document.getElementById('saga-state'); return s && s.textContent === 'compensated';",
        )
        .await;
    assert_eq!(state(&app.saga(&failed).await), "compensated");
    assert_eq!(
        browser.js("return window.__sameDocument;").await,
        json!("yes"),
        "everything so far happened without reloading the page"
    );

    // A step waiting out a ten-minute backoff is sent at once from its page.
    let _flaky = flaky_participant(&app).await;
    let patient = app.submit_id(&patient_saga("patient")).await;
    browser.goto(&format!("{base}/sagas/{patient}")).await;
    browser
        .wait_js(
            "the step's next attempt time and the retry-now button",
            SAGA_TIMEOUT,
            "return document.querySelector('#steps tr[data-step=\"charge\"] .retry-at') \
               && document.getElementById('action-retry-now');",
        )
        .await;
    // Paused and resumed from its page first.
    browser.click("#action-pause", UI_TIMEOUT).await;
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the paused flag and the resume button, live",
            SAGA_TIMEOUT,
            "return document.getElementById('saga-paused') \
               && document.getElementById('action-resume') \
               && !document.getElementById('action-retry-now');",
        )
        .await;
    assert!(app.saga(&patient).await["paused_at"].is_string());
    browser.click("#action-resume", UI_TIMEOUT).await;
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the saga running again",
            SAGA_TIMEOUT,
            "return !document.getElementById('saga-paused') \
               && document.getElementById('action-pause') \
               && document.getElementById('action-retry-now');",
        )
        .await;
    // Every saga of its name paused from its page, and resumed from the overview's banner.
    browser.click("#action-pause-name", UI_TIMEOUT).await;
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the saga held with its name, live",
            SAGA_TIMEOUT,
            "const p = document.getElementById('saga-paused'); \
             return p && p.textContent.includes('every patient saga') \
               && document.getElementById('action-resume-name');",
        )
        .await;
    assert_eq!(app.saga(&patient).await["paused_by"], json!("name"));
    browser.goto(&format!("{base}/")).await;
    browser
        .click(
            "#paused-names .paused-name[data-name=\"patient\"] button",
            UI_TIMEOUT,
        )
        .await;
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the banner gone once the name is resumed",
            SAGA_TIMEOUT,
            "return document.querySelectorAll('#paused-names .paused-name').length === 0;",
        )
        .await;
    browser.goto(&format!("{base}/sagas/{patient}")).await;
    browser
        .wait_js(
            "the saga running again",
            SAGA_TIMEOUT,
            "return document.getElementById('action-retry-now') \
               && !document.getElementById('saga-paused');",
        )
        .await;
    browser.click("#action-retry-now", UI_TIMEOUT).await;
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the saga committed without waiting ten minutes",
            SAGA_TIMEOUT,
            "const s = document.getElementById('saga-state'); return s && s.textContent === 'committed';",
        )
        .await;

    // Hostile data is shown as text and runs nothing.
    browser.goto(&format!("{base}/sagas/{hostile}")).await;
    browser
        .wait_js(
            "the hostile saga's page with its output",
            SAGA_TIMEOUT,
            "const p = document.getElementById('saga-payload'); \
             const out = document.querySelector('#steps tr[data-step=\"print\"] pre'); \
             return p && out && out.textContent.includes('parcel');",
        )
        .await;
    // For a look at the saga page (not in the README): under target/tmp.
    let saga_png = browser.screenshot().await;
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-saga.png"),
        saga_png,
    );
    let shown = browser
        .js(
            "return { payload: document.getElementById('saga-payload').textContent, \
                      text: document.body.innerText, \
                      scripts: document.querySelectorAll('main script, main img').length, \
                      xss: window.__xss === undefined ? null : window.__xss, \
                      title: document.title };",
        )
        .await;
    assert!(
        shown["payload"]
            .as_str()
            .is_some_and(|p| p.contains("<script>window.__xss = 1;")),
        "the payload is shown as text: {shown}"
    );
    let text = shown["text"].as_str().unwrap_or_default();
    assert!(
        text.matches("<script>").count() >= 3,
        "payload, key and output all show the markup as text: {shown}"
    );
    assert_eq!(
        shown["scripts"],
        json!(0),
        "no element was made from saga data"
    );
    assert_eq!(shown["xss"], Value::Null, "no script ran: {shown}");
    assert_ne!(shown["title"], json!("pwned"), "no script ran: {shown}");

    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_token_once_and_shows_dead_letters() {
    let app = TestApp::builder().api_token("s3cret").start().await;
    let base = app.api.base_url.clone();
    let _refuser = FakeParticipant::start(&app.ns, "refuser", |cmd| {
        if cmd.is_action() {
            Behaviour::Reject
        } else {
            Behaviour::success()
        }
    })
    .await;
    let id = app
        .submit_id(&saga(
            "rejected-order",
            vec![step_with("a", "refuser", json!({"retry": fast_retry(1)}))],
        ))
        .await;
    app.wait_for_state(&id, &["compensated"], SAGA_TIMEOUT)
        .await;

    let browser = Browser::start(1280, 900).await.expect("starting Chromium");
    browser.goto(&format!("{base}/")).await;
    browser.type_into("#token", "wrong", UI_TIMEOUT).await;
    browser.click("#login", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the refusal of a wrong token",
            UI_TIMEOUT,
            "const e = document.getElementById('login-error'); return e && e.textContent;",
        )
        .await;
    browser
        .js("document.getElementById('token').value = ''; return true;")
        .await;
    browser.type_into("#token", "s3cret", UI_TIMEOUT).await;
    browser.click("#login", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the overview after logging in",
            UI_TIMEOUT,
            &row_in_state("finished", &id, "compensated"),
        )
        .await;
    assert_eq!(
        browser.js("return document.cookie;").await,
        json!(""),
        "the token's cookie is out of the scripts' reach"
    );

    // Once: a new visit is still logged in.
    browser.goto(&format!("{base}/dead-letters")).await;
    let reason = browser
        .wait_js(
            "the rejected command among the dead letters",
            SAGA_TIMEOUT,
            "const r = document.querySelector('#dead-letters tr[data-reason]'); \
             return r && r.dataset.reason;",
        )
        .await;
    assert_eq!(reason, json!("rejected"));
    let body = browser
        .js("return document.querySelector('#dead-letters tr[data-reason] pre').textContent;")
        .await;
    assert!(
        body.as_str().is_some_and(|b| b.contains(&id)),
        "the dead letter's body: {body}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_login_works_and_cross_site_changes_are_refused() {
    let app = TestApp::builder().api_token("s3cret").start().await;
    let _hold = FakeParticipant::start(&app.ns, "hold", |_| Behaviour::NoReply).await;
    let id = app
        .submit_id(&saga("place-order", vec![slow_step("reserve", "hold")]))
        .await;
    let origin = app.api.base_url.clone();
    let http = reqwest::Client::new();
    let post = |path: &str| http.post(format!("{origin}{path}"));
    let get = |path: &str| http.get(format!("{origin}{path}"));

    // The page itself holds no data and needs no token; its data does.
    let page = get("/").send().await.expect("GET /");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page
        .text()
        .await
        .unwrap_or_default()
        .contains("/dashboard/app.js"));
    for path in [
        "/dashboard/api/overview",
        "/dashboard/api/stream",
        "/api/v1/sagas",
    ] {
        let resp = get(path).send().await.expect("GET");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }

    // Logging in: only from the page (the header), only with the right token.
    let login = |token: &str, from_page: bool| {
        let mut req = post("/dashboard/login").json(&json!({"token": token}));
        if from_page {
            req = req.header("X-Requested-With", "saga-dashboard");
        }
        req.send()
    };
    assert_eq!(
        login("wrong", true).await.expect("login").status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login("s3cret", false).await.expect("login").status(),
        StatusCode::FORBIDDEN,
        "a login not sent by the page's script"
    );
    let ok = login("s3cret", true).await.expect("login");
    assert_eq!(ok.status(), StatusCode::OK);
    let set_cookie = ok
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();
    let token_hex: String = b"s3cret".iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !cookie.contains("s3cret") && !cookie.contains(&token_hex),
        "the cookie proves the token without carrying it: {cookie}"
    );

    // The cookie reads.
    let overview = get("/dashboard/api/overview")
        .header("cookie", &cookie)
        .send()
        .await
        .expect("overview");
    let overview = expect_json(overview, StatusCode::OK).await;
    assert_eq!(overview["counts"]["running"], json!(1), "{overview}");
    assert_eq!(overview["in_flight"][0]["id"], json!(id), "{overview}");
    assert_eq!(overview["in_flight"][0]["current_step"], json!("reserve"));
    let total = |doc: &Value, key: &str| -> i64 {
        doc["throughput"]
            .as_array()
            .map(|minutes| minutes.iter().filter_map(|m| m[key].as_i64()).sum())
            .unwrap_or(-1)
    };
    assert_eq!(total(&overview, "started"), 1, "{overview}");
    assert_eq!(total(&overview, "finished"), 0, "{overview}");
    for (query, expected) in [
        ("?name=PLACE", 1),
        ("?name=nothing-like-it", 0),
        ("?state=running", 1),
        ("?state=failed", 0),
    ] {
        let resp = get(&format!("/dashboard/api/overview{query}"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("overview");
        let filtered = expect_json(resp, StatusCode::OK).await;
        assert_eq!(
            filtered["in_flight"].as_array().map(Vec::len),
            Some(expected),
            "{query}: {filtered}"
        );
    }
    let read = get(&format!("/api/v1/sagas/{id}"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("GET saga");
    assert_eq!(
        read.status(),
        StatusCode::OK,
        "the cookie reads the API too"
    );
    // A cookie that is not one the server made is refused: the old form (the token in hex), one
    // whose proof was altered, one whose session id was.
    let (session, proof) = cookie
        .trim_start_matches("saga_token=")
        .split_once('.')
        .expect("id.proof");
    let altered = |text: &str| -> String {
        let mut chars: Vec<char> = text.chars().collect();
        chars[0] = if chars[0] == '0' { '1' } else { '0' };
        chars.into_iter().collect()
    };
    for forged in [
        "saga_token=00".to_owned(),
        format!("saga_token={token_hex}"),
        format!("saga_token={session}.{}", altered(proof)),
        format!("saga_token={}.{proof}", altered(session)),
    ] {
        let bad_cookie = get("/dashboard/api/overview")
            .header("cookie", &forged)
            .send()
            .await
            .expect("overview");
        assert_eq!(bad_cookie.status(), StatusCode::UNAUTHORIZED, "{forged}");
    }

    // Changes with the cookie: refused unless the page's script sent them from our origin.
    let abort = format!("/api/v1/sagas/{id}/abort");
    let forged = [
        // A form or fetch from another site: no custom header.
        post(&abort).header("cookie", &cookie),
        post(&abort)
            .header("cookie", &cookie)
            .header("Origin", "http://evil.example"),
        post(&abort)
            .header("cookie", &cookie)
            .header("X-Requested-With", "saga-dashboard")
            .header("Sec-Fetch-Site", "cross-site"),
        post(&abort)
            .header("cookie", &cookie)
            .header("X-Requested-With", "saga-dashboard")
            .header("Origin", "http://evil.example"),
    ];
    for request in forged {
        let resp = request.send().await.expect("POST abort");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(
        state(&app.saga(&id).await),
        "running",
        "nothing was aborted"
    );

    // The page's own request goes through.
    let resp = post(&abort)
        .header("cookie", &cookie)
        .header("X-Requested-With", "saga-dashboard")
        .header("Origin", &origin)
        .header("Sec-Fetch-Site", "same-origin")
        .send()
        .await
        .expect("POST abort");
    let doc = expect_json(resp, StatusCode::OK).await;
    assert_ne!(state(&doc), "running", "{doc}");

    // Bearer clients are unchanged: no header, no cookie needed.
    let other = app
        .submit_id(&saga("place-order", vec![slow_step("reserve", "hold")]))
        .await;
    let resp = app
        .request(Method::POST, &format!("/api/v1/sagas/{other}/abort"))
        .send()
        .await
        .expect("abort");
    assert_eq!(resp.status(), StatusCode::OK);

    // Logging out clears the cookie.
    let out = post("/dashboard/logout")
        .header("cookie", &cookie)
        .header("X-Requested-With", "saga-dashboard")
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let cleared = out
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(cleared.starts_with("saga_token=;"), "{cleared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_cross_site_changes_are_still_refused() {
    let app = TestApp::start().await;
    let _hold = FakeParticipant::start(&app.ns, "hold", |_| Behaviour::NoReply).await;
    let id = app
        .submit_id(&saga("place-order", vec![slow_step("reserve", "hold")]))
        .await;
    let abort = format!("/api/v1/sagas/{id}/abort");
    let cross_site = app
        .request(Method::POST, &abort)
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .expect("abort");
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let other_origin = app
        .request(Method::POST, &abort)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .expect("abort");
    assert_eq!(other_origin.status(), StatusCode::FORBIDDEN);
    assert_eq!(state(&app.saga(&id).await), "running");
    // A plain client (no browser headers) still works.
    assert_eq!(app.abort(&id).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_stream_announces_committed_transitions() {
    let app = TestApp::start().await;
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let resp = app
        .request(Method::GET, "/dashboard/api/stream")
        .send()
        .await
        .expect("GET stream");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let mut body = resp;
    let mut text = String::new();
    // The greeting first: from then on, nothing is missed.
    while !text.contains("event: hello") {
        let chunk = tokio::time::timeout(SAGA_TIMEOUT, body.chunk())
            .await
            .expect("the stream's greeting")
            .expect("a chunk")
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let id = app
        .submit_id(&saga(
            "place-order",
            vec![step("a", "shop"), step("b", "shop")],
        ))
        .await;
    let mut states = Vec::new();
    let deadline = tokio::time::Instant::now() + SAGA_TIMEOUT;
    while !states.contains(&"committed".to_string()) {
        let chunk = tokio::time::timeout_at(deadline, body.chunk())
            .await
            .unwrap_or_else(|_| panic!("no committed notice; saw {states:?} in {text}"))
            .expect("a chunk")
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        states = text
            .split("\n\n")
            .filter_map(|frame| frame.strip_prefix("event: change\ndata: "))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .filter(|c| c["id"] == json!(id))
            .map(|c| c["state"].as_str().unwrap_or_default().to_owned())
            .collect();
    }
    assert_eq!(
        states.first().map(String::as_str),
        Some("running"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_shown_with_their_reason_and_stay_queued() {
    let app = TestApp::start().await;
    let _refuser = FakeParticipant::start(&app.ns, "refuser", |cmd| {
        if cmd.is_action() {
            Behaviour::Reject
        } else {
            Behaviour::success()
        }
    })
    .await;
    let id = app
        .submit_id(&saga(
            "rejected-order",
            vec![step_with("a", "refuser", json!({"retry": fast_retry(1)}))],
        ))
        .await;
    app.wait_for_state(&id, &["compensated"], SAGA_TIMEOUT)
        .await;

    let browse = async || {
        let resp = app
            .request(Method::GET, "/dashboard/api/dead-letters")
            .send()
            .await
            .expect("GET dead letters");
        expect_json(resp, StatusCode::OK).await
    };
    let first = e2e::eventually("the dead letter", SAGA_TIMEOUT, async || {
        let found = browse().await;
        (found["total"].as_u64() >= Some(1)).then_some(found)
    })
    .await;
    let letter = &first["items"][0];
    assert_eq!(letter["reason"], json!("rejected"), "{first}");
    assert_eq!(
        letter["queue"],
        json!(app.ns.participant_queue("refuser")),
        "{first}"
    );
    assert_eq!(letter["type"], json!("action"), "{first}");
    assert!(
        letter["body"].as_str().is_some_and(|b| b.contains(&id)),
        "{first}"
    );
    let overview = expect_json(
        app.request(Method::GET, "/dashboard/api/overview")
            .send()
            .await
            .expect("overview"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(overview["counts"]["compensated"], json!(1), "{overview}");
    assert_eq!(overview["finished"][0]["id"], json!(id), "{overview}");
    let finished: i64 = overview["throughput"]
        .as_array()
        .map(|minutes| minutes.iter().filter_map(|m| m["finished"].as_i64()).sum())
        .unwrap_or(-1);
    assert_eq!(finished, 1, "{overview}");
    // Browsing took nothing away.
    let again = browse().await;
    assert_eq!(again["total"], first["total"], "{again}");
    let queue = app.ns.dead_letters_queue();
    let len = e2e::eventually(
        "the browsed messages back in the queue",
        SAGA_TIMEOUT,
        async || {
            let n = app.ns.queue_len(&queue).await.ok().flatten()?;
            (u64::from(n) == first["total"].as_u64().unwrap_or(0)).then_some(n)
        },
    )
    .await;
    assert!(len >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_change_streams_cleanly() {
    let db = tokio::task::spawn_blocking(e2e::test_db)
        .await
        .expect("creating the test database");
    let ns = e2e::TestNamespace::new();
    let (url, namespace) = (db.url().to_string(), ns.name().to_string());
    let mut process = tokio::task::spawn_blocking(move || {
        e2e::CoordinatorProcess::start(
            env!("CARGO_BIN_EXE_coordinator-under-test"),
            &url,
            &e2e::amqp_url(),
            &namespace,
            &[],
        )
    })
    .await
    .expect("join")
    .expect("starting the coordinator process");
    let mut stream = process
        .api()
        .request(Method::GET, "/dashboard/api/stream")
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let first = stream
        .chunk()
        .await
        .expect("a chunk")
        .expect("the greeting");
    assert!(String::from_utf8_lossy(&first).contains("event: hello"));

    let stopped = tokio::task::spawn_blocking(move || process.terminate(SAGA_TIMEOUT));
    // A stream the server ends has a proper end; one cut by a forced shutdown is an error.
    loop {
        match stream.chunk().await {
            Ok(Some(_keep_alive)) => continue,
            Ok(None) => break,
            Err(e) => panic!("the stream was cut instead of ended: {e}"),
        }
    }
    let status = stopped
        .await
        .expect("join")
        .expect("the coordinator exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_saga_whose_check_backs_ran_out_can_be_committed_from_its_page() {
    let app = TestApp::start().await;
    let base = app.api.base_url.clone();
    let shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    // The initiator's participant is down: every check-back times out.
    app.ns.register_participant("orders-down");
    let mut def = saga("two-phase-order", vec![step("reserve", "shop")]);
    def["mode"] = json!("prepare");
    def["prepare_timeout_ms"] = json!(50);
    def["check_back"] =
        json!({"participant": "orders-down", "timeout_ms": 100, "retry": fast_retry(2)});
    let id = app.submit_id(&def).await;
    app.wait_for_state(&id, &["failed"], SAGA_TIMEOUT).await;

    let browser = Browser::start(1280, 900).await.expect("starting Chromium");
    browser.goto(&format!("{base}/sagas/{id}")).await;
    let shown = browser
        .wait_js(
            "the failed two-phase saga's page",
            UI_TIMEOUT,
            "const c = document.getElementById('saga-check-back'); \
             const b = document.getElementById('saga-attention'); \
             return c && b && document.getElementById('action-commit') \
               ? [c.textContent, b.textContent] : null;",
        )
        .await;
    assert!(
        shown[0]
            .as_str()
            .is_some_and(|t| t.contains("participant orders-down") && t.contains("2 of 2")),
        "{shown}"
    );
    assert!(
        shown[1]
            .as_str()
            .is_some_and(|t| t.contains("never answered")),
        "{shown}"
    );
    browser.click("#action-commit", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the confirmation dialog",
            UI_TIMEOUT,
            "return document.getElementById('confirm').open;",
        )
        .await;
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the committed saga, live",
            SAGA_TIMEOUT,
            "const s = document.getElementById('saga-state'); return s && s.textContent === 'committed';",
        )
        .await;
    assert_eq!(shop.commands_for(&id).len(), 1);
    browser.close().await;
}

/// JS: the bulk action row `id` (`.bulk-action[data-id]`) as `[state, progress text, counts text,
/// has a cancel button]`, or `null` while it is not shown.
fn bulk_row(id: &str) -> String {
    format!(
        "const r = document.querySelector('#bulk-actions tr.bulk-action[data-id=\"{id}\"]'); \
         return r && [r.dataset.state, r.querySelector('.bulk-progress').textContent, \
                      r.querySelector('.bulk-counts').textContent, \
                      r.querySelector('.bulk-cancel') !== null];"
    )
}

/// JS: picks `value` in the confirmation dialog's action select, as a user would.
fn choose_action(value: &str) -> String {
    format!(
        "const s = document.getElementById('confirm-action'); s.value = '{value}'; \
         s.dispatchEvent(new Event('change')); return s.value === '{value}';"
    )
}

/// Clicks "Apply to all matching…" and waits for its dialog, with the action select; answers the
/// dialog's text.
async fn open_bulk_dialog(browser: &Browser) -> Value {
    browser.click("#bulk-start", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the bulk dialog",
            UI_TIMEOUT,
            "return document.getElementById('confirm').open \
               && !document.getElementById('confirm-action-label').hidden \
               && document.getElementById('confirm-text').textContent;",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_start_from_the_filtered_list_and_show_their_progress() {
    const FAILED: usize = 5;
    const HELD: usize = 6;
    // One saga a second: a bulk action runs long enough to watch it, and to cancel one.
    let app = TestApp::builder().bulk_action_rate(1).start().await;
    let base = app.api.base_url.clone();
    let fixed = Arc::new(AtomicBool::new(false));
    let _shop = broken_compensation_shop(&app, fixed.clone()).await;
    let _hold = FakeParticipant::start(&app.ns, "hold", |cmd| {
        if cmd.is_action() {
            Behaviour::NoReply
        } else {
            Behaviour::success()
        }
    })
    .await;
    let mut failed = Vec::new();
    for _ in 0..FAILED {
        failed.push(app.submit_id(&broken_compensation_saga()).await);
    }
    let mut held = Vec::new();
    for _ in 0..HELD {
        held.push(
            app.submit_id(&saga("place-order", vec![slow_step("reserve", "hold")]))
                .await,
        );
    }
    for id in &failed {
        app.wait_for_state(id, &["failed"], SAGA_TIMEOUT).await;
    }
    for id in &held {
        app.wait_for_state(id, &["running"], SAGA_TIMEOUT).await;
    }
    // Repaired: a retry compensates them.
    fixed.store(true, Ordering::SeqCst);

    let browser = Browser::start(1440, 1100).await.expect("starting Chromium");
    browser.goto(&format!("{base}/")).await;
    browser
        .wait_js(
            "every saga in flight, the empty bulk panel, and no bulk action without a filter",
            UI_TIMEOUT,
            &format!(
                "return document.querySelectorAll('#in-flight tr[data-saga-id]').length === {} \
                   && document.querySelector('#bulk-actions td.empty') !== null \
                   && document.getElementById('bulk-start').disabled;",
                FAILED + HELD
            ),
        )
        .await;

    // A name the list finds nothing for is no saga name: the API's 422 is shown in the dialog.
    browser
        .type_into("#filter-name", "place order", UI_TIMEOUT)
        .await;
    browser
        .wait_js(
            "the button enabled by the name filter",
            UI_TIMEOUT,
            "return !document.getElementById('bulk-start').disabled \
               && document.querySelectorAll('#in-flight tr[data-saga-id]').length === 0;",
        )
        .await;
    open_bulk_dialog(&browser).await;
    assert_eq!(browser.js(&choose_action("pause")).await, json!(true));
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    let refusal = browser
        .wait_js(
            "the API's refusal in the dialog",
            UI_TIMEOUT,
            "return document.getElementById('confirm-error').textContent;",
        )
        .await;
    assert!(
        refusal
            .as_str()
            .is_some_and(|r| r.contains("filter.name") && r.contains("not a saga name")),
        "{refusal}"
    );
    assert_eq!(
        browser
            .js("return document.getElementById('confirm').open;")
            .await,
        json!(true),
        "a refused bulk action keeps its dialog open"
    );
    // For a look at the dialog (not in the README): under target/tmp.
    let dialog_png = browser.screenshot().await;
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-bulk-dialog.png"),
        dialog_png,
    );
    browser.click("#confirm-cancel", UI_TIMEOUT).await;
    let none = expect_json(app.bulk_actions(&[]).await, StatusCode::OK).await;
    assert_eq!(none["items"], json!([]), "{none}");

    // The failed ones, retried from the list filtered by state.
    browser
        .js(
            "const i = document.getElementById('filter-name'); i.value = ''; \
             i.dispatchEvent(new Event('input')); return true;",
        )
        .await;
    browser
        .click("#counts .card[data-state=\"failed\"]", UI_TIMEOUT)
        .await;
    browser
        .wait_js(
            "the list filtered to the failed sagas",
            UI_TIMEOUT,
            &format!(
                "const rows = [...document.querySelectorAll('#in-flight tr[data-saga-id]')]; \
                 return location.search === '?state=failed' && rows.length === {FAILED} \
                   && rows.every((r) => r.dataset.state === 'failed') \
                   && !document.getElementById('bulk-start').disabled;"
            ),
        )
        .await;
    let text = open_bulk_dialog(&browser).await;
    assert!(
        text.as_str().is_some_and(|t| t.contains("in state failed")),
        "{text}"
    );
    // Resolve asks for a note; retry does not.
    assert_eq!(browser.js(&choose_action("resolve")).await, json!(true));
    assert_eq!(
        browser
            .js("return document.getElementById('confirm-note-label').hidden;")
            .await,
        json!(false)
    );
    assert_eq!(browser.js(&choose_action("retry")).await, json!(true));
    assert_eq!(
        browser
            .js(
                "return [document.getElementById('confirm-note-label').hidden, \
                         document.getElementById('confirm-ok').textContent];"
            )
            .await,
        json!([true, "Retry them all"])
    );
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    let retry = browser
        .wait_js(
            "the new bulk action in the panel",
            UI_TIMEOUT,
            "const r = document.querySelector('#bulk-actions tr.bulk-action'); \
             return !document.getElementById('confirm').open && r && r.dataset.id;",
        )
        .await;
    let retry = retry.as_str().expect("an id").to_owned();
    // Its progress moves while it runs, without a reload, and it can be cancelled meanwhile.
    let midway = browser
        .wait_js(
            "the bulk retry part done",
            SAGA_TIMEOUT,
            &format!(
                "const r = (() => {{ {} }})(); \
                 return r && r[0] === 'running' && r[3] && /^[1-{}] of {FAILED}$/.test(r[1]) && r;",
                bulk_row(&retry),
                FAILED - 1
            ),
        )
        .await;
    assert!(
        midway[2].as_str().is_some_and(|c| c.contains("to do")),
        "{midway}"
    );
    let finished = browser
        .wait_js(
            "the bulk retry done",
            SAGA_TIMEOUT,
            &format!(
                "const r = (() => {{ {} }})(); return r && r[0] === 'done' && r;",
                bulk_row(&retry)
            ),
        )
        .await;
    assert_eq!(
        finished[1],
        json!(format!("{FAILED} of {FAILED}")),
        "{finished}"
    );
    assert!(
        finished[2]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("{FAILED} applied · 0 unchanged · 0 skipped"))),
        "{finished}"
    );
    assert_eq!(finished[3], json!(false), "a finished one has no cancel");
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-bulk.png"),
        &png,
    )
    .expect("writing the screenshot under the target folder");
    let listed = expect_json(app.bulk_actions(&[]).await, StatusCode::OK).await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let doc = expect_json(app.bulk_action(&retry).await, StatusCode::OK).await;
    assert_eq!(doc["action"], json!("retry"), "{doc}");
    assert_eq!(doc["filter"], json!({"state": ["failed"]}), "{doc}");
    assert_eq!(doc["state"], json!("done"), "{doc}");
    assert_eq!(
        (&doc["total"], &doc["applied"], &doc["pending"]),
        (&json!(FAILED), &json!(FAILED), &json!(0)),
        "{doc}"
    );
    for id in &failed {
        app.wait_for_state(id, &["compensated"], SAGA_TIMEOUT).await;
    }

    // Every running place-order saga paused, by name, and the bulk pause cancelled halfway.
    browser
        .js(
            "const s = document.getElementById('filter-state'); s.value = ''; \
             s.dispatchEvent(new Event('change')); return true;",
        )
        .await;
    browser
        .type_into("#filter-name", "place-order", UI_TIMEOUT)
        .await;
    browser
        .wait_js(
            "the list filtered by name",
            UI_TIMEOUT,
            &format!(
                "return location.search === '?name=place-order' \
                   && document.querySelectorAll('#in-flight tr[data-saga-id]').length === {HELD} \
                   && !document.getElementById('bulk-start').disabled;"
            ),
        )
        .await;
    let text = open_bulk_dialog(&browser).await;
    assert!(
        text.as_str()
            .is_some_and(|t| t.contains("in flight named exactly “place-order”")),
        "{text}"
    );
    assert_eq!(browser.js(&choose_action("pause")).await, json!(true));
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    let pause = browser
        .wait_js(
            "the bulk pause in the panel, running",
            UI_TIMEOUT,
            &format!(
                "const r = document.querySelector('#bulk-actions tr.bulk-action'); \
                 return r && r.dataset.id !== '{retry}' && r.dataset.state === 'running' \
                   && r.querySelector('.bulk-cancel') && r.dataset.id;"
            ),
        )
        .await;
    let pause = pause.as_str().expect("an id").to_owned();
    browser
        .click(
            &format!("#bulk-actions tr.bulk-action[data-id=\"{pause}\"] .bulk-cancel"),
            UI_TIMEOUT,
        )
        .await;
    browser
        .wait_js(
            "the confirmation dialog",
            UI_TIMEOUT,
            "return document.getElementById('confirm').open;",
        )
        .await;
    browser.click("#confirm-ok", UI_TIMEOUT).await;
    let cancelled = browser
        .wait_js(
            "the bulk pause cancelled",
            SAGA_TIMEOUT,
            &format!(
                "const r = (() => {{ {} }})(); return r && r[0] === 'cancelled' && r;",
                bulk_row(&pause)
            ),
        )
        .await;
    assert_eq!(cancelled[3], json!(false), "{cancelled}");
    let doc = expect_json(app.bulk_action(&pause).await, StatusCode::OK).await;
    assert_eq!(doc["state"], json!("cancelled"), "{doc}");
    assert_eq!(
        doc["filter"],
        json!({"state": ["prepared", "running", "compensating", "failed"], "name": "place-order"}),
        "{doc}"
    );
    assert_eq!(doc["total"], json!(HELD), "{doc}");
    // A batch under way when it was cancelled finishes: then the paused sagas are the applied ones.
    let (applied, paused) = e2e::eventually(
        "the bulk pause's last batch settled",
        SAGA_TIMEOUT,
        async || {
            let doc = expect_json(app.bulk_action(&pause).await, StatusCode::OK).await;
            let mut paused = 0;
            for id in &held {
                if app.saga(id).await["paused_at"].is_string() {
                    paused += 1;
                }
            }
            (doc["applied"].as_u64() == Some(paused)).then_some((doc["applied"].clone(), paused))
        },
    )
    .await;
    assert!(
        paused >= 1 && paused < HELD as u64,
        "cancelled halfway: {applied} applied, {paused} paused"
    );

    // One started elsewhere (here the API) shows on the next visit; its skipped sagas, with why.
    let created = expect_json(
        app.create_bulk_action(&json!({"action": "abort", "filter": {"name": "hard-to-undo"}}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let abort = created["id"].as_str().expect("an id").to_owned();
    browser.goto(&format!("{base}/")).await;
    let done = browser
        .wait_js(
            "the API's bulk abort done, every saga skipped",
            SAGA_TIMEOUT,
            &format!(
                "const r = (() => {{ {} }})(); return r && r[0] === 'done' && r;",
                bulk_row(&abort)
            ),
        )
        .await;
    assert!(
        done[2]
            .as_str()
            .is_some_and(|c| c.contains(&format!("{FAILED} skipped"))),
        "{done}"
    );
    browser
        .click(
            &format!("#bulk-actions tr.bulk-action[data-id=\"{abort}\"] .bulk-skipped-toggle"),
            UI_TIMEOUT,
        )
        .await;
    let skipped = browser
        .wait_js(
            "the skipped sagas with their reasons",
            UI_TIMEOUT,
            &format!(
                "const items = [...document.querySelectorAll('#bulk-actions tr.bulk-skipped[data-id=\"{abort}\"] li')]; \
                 return items.length === {FAILED} \
                   && items.map((li) => [li.dataset.sagaId, li.querySelector('.reason').textContent]);"
            ),
        )
        .await;
    let mut ids: Vec<String> = skipped
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            assert!(
                item[1].as_str().is_some_and(|r| !r.is_empty() && r != "—"),
                "a reason: {skipped}"
            );
            item[0].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    ids.sort();
    let mut expected = failed.clone();
    expected.sort();
    assert_eq!(ids, expected, "{skipped}");
    browser.close().await;
}

/// JS: the ids of the history page's result rows, once a search has answered (else `null`).
const HISTORY_ROWS: &str = "const body = document.getElementById('history-results'); \
     if (!body || !body.querySelector('tr')) return null; \
     return [...body.querySelectorAll('tr[data-saga-id]')].map((r) => r.dataset.sagaId);";

/// JS: the saga page's picture as `[step, kind, attempt, outcome]` per bar (a retry wait's outcome
/// is `wait`), in the event log's order; `null` until the page shows saga `id` in `state`.
fn picture_of(id: &str, state: &str) -> String {
    format!(
        "const s = document.getElementById('saga-state'); \
         if (!s || s.textContent !== '{state}' || document.getElementById('saga-id').textContent !== '{id}') return null; \
         return [...document.querySelectorAll('#saga-gantt rect.bar')] \
           .map((b) => [b.dataset.step, b.dataset.kind, Number(b.dataset.attempt), b.dataset.outcome]);"
    )
}

/// Submits the history form with these field values (ids `history-{field}`; the rest emptied).
async fn search_history(browser: &Browser, fields: &[(&str, &str)]) {
    let values = json!(fields);
    browser
        .js(&format!(
            "const values = {values}; \
             for (const el of document.querySelectorAll('#history-form input')) {{ \
               if (el.type === 'checkbox') el.checked = false; else el.value = ''; }} \
             for (const [field, value] of values) {{ \
               if (field === 'state') document.querySelector(`#history-form input[name=state][value=\"${{value}}\"]`).checked = true; \
               else document.getElementById(`history-${{field}}`).value = value; }} \
             document.getElementById('history-results').replaceChildren(); \
             return true;"
        ))
        .await;
    browser.click("#history-search", UI_TIMEOUT).await;
}

/// Saves a screenshot under the target folder, for a look at a page (never in the tracked tree).
async fn screenshot(browser: &Browser, file: &str) {
    let png = browser.screenshot().await;
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(file),
        png,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_page_finds_sagas_and_their_pages_draw_the_attempts() {
    let app = TestApp::start().await;
    let base = app.api.base_url.clone();
    let _flaky = flaky_participant(&app).await;
    let _warehouse = FakeParticipant::always_succeed(&app.ns, "warehouse").await;
    let _shop = broken_compensation_shop(&app, Arc::new(AtomicBool::new(true))).await;
    let (_gate, open_gate) = gated_participant(&app, "gate").await;

    // Two sagas of one name told apart by their keys; the first attempt of `charge` asks for a retry.
    let shipment = |key: &str| {
        let mut def = saga(
            "ship-history",
            vec![
                step_with("charge", "flaky", json!({"retry": fast_retry(3)})),
                step("pack", "warehouse"),
            ],
        );
        def["key"] = json!(key);
        def
    };
    let first = app.submit_id(&shipment("order-77")).await;
    app.wait_for_state(&first, &["committed"], SAGA_TIMEOUT)
        .await;
    let second = app.submit_id(&shipment("order-78")).await;
    app.wait_for_state(&second, &["committed"], SAGA_TIMEOUT)
        .await;
    // `s2` refuses: `s1` is compensated.
    let undone = app.submit_id(&broken_compensation_saga()).await;
    app.wait_for_state(&undone, &["compensated"], SAGA_TIMEOUT)
        .await;

    let browser = Browser::start(1440, 1000).await.expect("starting Chromium");
    browser.goto(&format!("{base}/")).await;
    browser
        .click("header nav a[href='/history']", UI_TIMEOUT)
        .await;
    let all = browser
        .wait_js("every saga in the history", UI_TIMEOUT, HISTORY_ROWS)
        .await;
    assert_eq!(
        all,
        json!([undone, second, first]),
        "newest first, without a filter"
    );
    assert_eq!(
        browser
            .js("return document.querySelector('header nav a.current').dataset.nav;")
            .await,
        json!("history")
    );

    // By key: exactly the one saga, and the search kept in the address.
    search_history(&browser, &[("key", "order-77"), ("state", "committed")]).await;
    let found = browser
        .wait_js("the saga found by its key", UI_TIMEOUT, HISTORY_ROWS)
        .await;
    assert_eq!(found, json!([first]));
    assert_eq!(
        browser
            .js("return location.pathname + location.search;")
            .await,
        json!("/history?state=committed&key=order-77")
    );
    let row = browser
        .js(&format!(
            "const r = document.querySelector('#history-results tr[data-saga-id=\"{first}\"]'); \
             return [r.querySelector('td.name').textContent, r.querySelector('td.key').textContent, \
                     r.dataset.state];"
        ))
        .await;
    assert_eq!(row, json!(["ship-history", "order-77", "committed"]));
    // For a look at the page (not in the README): under target/tmp.
    screenshot(&browser, "dashboard-history.png").await;

    // Nothing created after a day from now.
    let tomorrow = browser
        .js(
            "const d = new Date(Date.now() + 86400000); const two = (n) => String(n).padStart(2, '0'); \
             return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}T${two(d.getHours())}:${two(d.getMinutes())}:00`;",
        )
        .await;
    search_history(
        &browser,
        &[("created_after", tomorrow.as_str().expect("a time"))],
    )
    .await;
    let empty = browser
        .wait_js(
            "the empty result",
            UI_TIMEOUT,
            "const e = document.querySelector('#history-results td.empty'); return e && e.textContent;",
        )
        .await;
    assert_eq!(empty, json!("No saga matches these filters."));
    assert!(
        browser
            .js("return new URLSearchParams(location.search).get('created_after');")
            .await
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "the time is sent in UTC"
    );

    // A refused search: the API's rule beside its field.
    search_history(&browser, &[("name", "not a name")]).await;
    let refusal = browser
        .wait_js(
            "the name's error beside its field",
            UI_TIMEOUT,
            "const e = document.querySelector('#history-form .field-error[data-field=\"name\"]'); \
             return e && e.textContent;",
        )
        .await;
    assert!(
        refusal
            .as_str()
            .is_some_and(|r| r.contains("not a saga name")),
        "{refusal}"
    );

    // Back: the search before, in the form and its results.
    browser.client().back().await.expect("going back");
    browser
        .wait_js(
            "the empty search again",
            UI_TIMEOUT,
            "return document.querySelector('#history-results td.empty') \
               && document.getElementById('history-created_after').value !== '';",
        )
        .await;

    // A page at a time, both ways.
    search_history(&browser, &[("name", "ship-history"), ("limit", "1")]).await;
    let newest = browser
        .wait_js("the first page", UI_TIMEOUT, HISTORY_ROWS)
        .await;
    assert_eq!(newest, json!([second]));
    browser.click("#history-older:enabled", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the older page",
            UI_TIMEOUT,
            &format!(
                "const rows = (() => {{ {HISTORY_ROWS} }})(); \
                 return rows && rows.length === 1 && rows[0] === '{first}';"
            ),
        )
        .await;
    browser.click("#history-newer:enabled", UI_TIMEOUT).await;
    browser
        .wait_js(
            "the newer page again",
            UI_TIMEOUT,
            &format!(
                "const rows = (() => {{ {HISTORY_ROWS} }})(); \
                 return rows && rows.length === 1 && rows[0] === '{second}';"
            ),
        )
        .await;

    // Through to the saga's page: its retried step drawn attempt by attempt.
    search_history(&browser, &[("key", "order-77")]).await;
    browser
        .wait_js("the saga found by its key", UI_TIMEOUT, HISTORY_ROWS)
        .await;
    browser
        .click(
            &format!("#history-results tr[data-saga-id=\"{first}\"] td.name a"),
            UI_TIMEOUT,
        )
        .await;
    let bars = browser
        .wait_js(
            "the committed saga's picture",
            UI_TIMEOUT,
            &picture_of(&first, "committed"),
        )
        .await;
    assert_eq!(
        bars,
        json!([
            ["charge", "action", 1, "failed"],
            ["charge", "action", 1, "wait"],
            ["charge", "action", 2, "succeeded"],
            ["pack", "action", 1, "succeeded"],
        ]),
        "an attempt per action, the retry wait between them"
    );
    let shown = browser
        .js(
            "return { lanes: [...document.querySelectorAll('#saga-gantt .lane-label')].map((t) => t.textContent), \
                      ticks: document.querySelectorAll('#saga-gantt .tick').length, \
                      titles: [...document.querySelectorAll('#saga-gantt rect.bar title')].map((t) => t.textContent), \
                      times: [...document.querySelectorAll('#timeline .when')].map((w) => w.textContent) };",
        )
        .await;
    assert_eq!(shown["lanes"], json!(["charge", "pack"]), "{shown}");
    assert!(shown["ticks"].as_u64() >= Some(2), "a time axis: {shown}");
    assert!(
        shown["titles"][0].as_str().is_some_and(
            |t| t.contains("action attempt 1: failed") && t.contains("the bank is down")
        ),
        "each bar says what it was and when: {shown}"
    );
    let millis = |t: &Value| {
        t.as_str().is_some_and(|t| {
            t.split(|c: char| !c.is_ascii_digit())
                .any(|part| part.len() == 3)
        })
    };
    assert!(
        shown["times"]
            .as_array()
            .is_some_and(|t| !t.is_empty() && t.iter().all(millis)),
        "the event log's times to the millisecond: {shown}"
    );

    screenshot(&browser, "dashboard-attempts.png").await;

    // A compensated saga: its compensation drawn after its action.
    browser.goto(&format!("{base}/sagas/{undone}")).await;
    let bars = browser
        .wait_js(
            "the compensated saga's picture",
            UI_TIMEOUT,
            &picture_of(&undone, "compensated"),
        )
        .await;
    assert_eq!(
        bars,
        json!([
            ["s1", "action", 1, "succeeded"],
            ["s2", "action", 1, "failed"],
            ["s1", "compensation", 1, "compensated"],
        ])
    );

    // Live: the attempt in flight, then its answer, without a reload.
    let gated = app
        .submit_id(&saga("gated-history", vec![step("hold", "gate")]))
        .await;
    browser.goto(&format!("{base}/sagas/{gated}")).await;
    let bars = browser
        .wait_js(
            "the attempt in flight",
            SAGA_TIMEOUT,
            &picture_of(&gated, "running"),
        )
        .await;
    assert_eq!(bars, json!([["hold", "action", 1, "running"]]));
    browser
        .js("window.__sameDocument = 'yes'; return true;")
        .await;
    open_gate.send_replace(true);
    let bars = browser
        .wait_js(
            "the attempt answered, live",
            SAGA_TIMEOUT,
            &picture_of(&gated, "committed"),
        )
        .await;
    assert_eq!(bars, json!([["hold", "action", 1, "succeeded"]]));
    assert_eq!(
        browser.js("return window.__sameDocument;").await,
        json!("yes")
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sagas_page_shows_its_trace_id_linked_to_the_tracing_ui() {
    let app = TestApp::builder()
        .trace_url_template("http://jaeger.example:16686/trace/{trace_id}")
        .start()
        .await;
    let base = app.api.base_url.clone();
    let _shop = FakeParticipant::always_succeed(&app.ns, "shop").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = expect_json(
        app.request(Method::POST, "/api/v1/sagas")
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .json(&saga("traced", vec![step("a", "shop")]))
            .send()
            .await
            .expect("submit"),
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    app.wait_for_state(&traced, &["committed"], SAGA_TIMEOUT)
        .await;

    let browser = Browser::start(1280, 900).await.expect("starting Chromium");
    browser.goto(&format!("{base}/sagas/{traced}")).await;
    let shown = browser
        .wait_js(
            "the saga's trace",
            UI_TIMEOUT,
            "const t = document.getElementById('saga-trace'); \
             return t ? { text: t.textContent, href: t.getAttribute('href') } : null;",
        )
        .await;
    assert_eq!(
        shown,
        json!({"text": trace_id, "href": format!("http://jaeger.example:16686/trace/{trace_id}")})
    );
    browser.close().await;

    // The page's one read names no saga: a clear 404, for an unknown id and for a malformed one.
    for unknown in [uuid::Uuid::now_v7().to_string(), "not-a-saga".to_string()] {
        let response = app
            .request(
                Method::GET,
                &format!("/dashboard/api/sagas/{unknown}/stored"),
            )
            .send()
            .await
            .expect("reading an unknown saga");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{unknown}");
    }
}
