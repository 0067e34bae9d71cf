//! Who may call the web edge, for both of its halves: the API's bearer token, the dashboard's login
//! cookie that stands in for it, and the refusal of cross-site changes. [`require_token`] guards
//! `/api/v1` and `/dashboard/api`; [`login`] and [`logout`] are the dashboard's.
//!
//! With `SAGA_API_TOKEN` set, `POST /dashboard/login` checks the token once and sets the cookie
//! [`COOKIE`] to a proof of it, not the token: a random session id and the HMAC-SHA256 of that id
//! keyed by the token (`{id}.{mac}`, hex), so a leaked cookie does not reveal the token, and the
//! server recognises its cookies without storing sessions. The cookie is HttpOnly (no script can read it), SameSite=Strict (no other site's page
//! makes the browser send it). The API's token check accepts the cookie instead of the bearer header,
//! but a state-changing request authenticated by the cookie must also carry [`DASHBOARD_HEADER`]: a
//! custom header that another origin cannot add without a CORS preflight, which this server never
//! grants. Independently of any token, a state-changing request that the browser marks as coming
//! from another site (`Sec-Fetch-Site`, or an `Origin` that is not this host) is refused: without a
//! token the API is open, and a page elsewhere must still not abort sagas through the operator's
//! browser. Clients that are not browsers send neither header and are unaffected.

use actix_web::body::MessageBody;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use super::error::ApiError;
use super::state::AppState;

/// The cookie holding the dashboard's token.
pub const COOKIE: &str = "saga_token";

/// The header the dashboard's script sends with every request, and its value.
pub const DASHBOARD_HEADER: &str = "x-requested-with";
pub const DASHBOARD_HEADER_VALUE: &str = "saga-dashboard";

/// `SAGA_API_TOKEN`: when set, every `/api/` request must carry it as a bearer token, or come from
/// the dashboard with its login cookie (see the module comment). Requests that would change
/// something are refused when a browser says they come from another site.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let changes = changes_state(req.request());
    if changes && is_cross_origin(req.request()) {
        return Err(ApiError::Forbidden("cross-site requests may not change sagas".into()).into());
    }
    let expected = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.api_token.clone());
    if let Some(expected) = expected {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), expected.as_bytes()) => {}
            None if cookie_matches(req.request(), &expected) => {
                if changes && !from_dashboard(req.request()) {
                    return Err(ApiError::Forbidden(
                        "a change authenticated by the dashboard's cookie must come from its page"
                            .into(),
                    )
                    .into());
                }
            }
            _ => return Err(ApiError::Unauthorized.into()),
        }
    }
    next.call(req).await
}

/// Compares without leaking where the first difference is through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request may change something (anything but GET, HEAD and OPTIONS).
fn changes_state(req: &HttpRequest) -> bool {
    !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The browser says this request comes from a page of another origin.
fn is_cross_origin(req: &HttpRequest) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        // `none`: typed by the user or a bookmark; `same-origin`: our own page.
        if !matches!(site, "same-origin" | "none") {
            return true;
        }
    }
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => false,
        Some(Ok(origin)) => {
            let host = req.connection_info().host().to_owned();
            origin
                .split_once("://")
                .is_none_or(|(_, authority)| !authority.eq_ignore_ascii_case(&host))
        }
        Some(Err(_)) => true,
    }
}

/// The request was sent by the dashboard's script (see the module comment).
fn from_dashboard(req: &HttpRequest) -> bool {
    req.headers()
        .get(DASHBOARD_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(DASHBOARD_HEADER_VALUE))
}

/// The request's cookie proves `token` (see [`session_cookie`]).
fn cookie_matches(req: &HttpRequest, token: &str) -> bool {
    req.cookie(COOKIE)
        .is_some_and(|c| cookie_proves(c.value(), token))
}

type SessionMac = Hmac<Sha256>;

/// A new cookie value proving `token`: `{session id}.{HMAC-SHA256(token, session id)}`, both hex.
fn session_cookie(token: &str) -> Option<String> {
    let session = hex(&rand::random::<[u8; 32]>());
    let mut mac = <SessionMac as KeyInit>::new_from_slice(token.as_bytes()).ok()?;
    mac.update(session.as_bytes());
    Some(format!("{session}.{}", hex(&mac.finalize().into_bytes())))
}

/// Whether `value` is a cookie made by [`session_cookie`] for `token`; the MAC is compared in
/// constant time.
fn cookie_proves(value: &str, token: &str) -> bool {
    let Some((session, tag)) = value.split_once('.') else {
        return false;
    };
    let (Some(tag), Ok(mut mac)) = (
        unhex(tag),
        <SessionMac as KeyInit>::new_from_slice(token.as_bytes()),
    ) else {
        return false;
    };
    mac.update(session.as_bytes());
    mac.verify_slice(&tag).is_ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[derive(Deserialize)]
pub struct Login {
    token: String,
}

/// Checks the token and sets the cookie. Same-origin script requests only (no login CSRF).
pub async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Login>,
) -> Result<HttpResponse, ApiError> {
    if is_cross_origin(&req) || !from_dashboard(&req) {
        return Err(ApiError::Forbidden(
            "log in from the dashboard's own page".into(),
        ));
    }
    let Some(expected) = state.api_token.as_deref() else {
        return Ok(HttpResponse::Ok().json(json!({"authentication": "none"})));
    };
    if !constant_time_eq(body.token.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    let value = session_cookie(expected)
        .ok_or_else(|| ApiError::Internal("cannot make a session cookie".into()))?;
    let cookie = Cookie::build(COOKIE, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(req.connection_info().scheme() == "https")
        .finish();
    Ok(HttpResponse::Ok()
        .cookie(cookie)
        .json(json!({"authentication": "cookie"})))
}

/// Forgets the cookie.
pub async fn logout(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if is_cross_origin(&req) || !from_dashboard(&req) {
        return Err(ApiError::Forbidden(
            "log out from the dashboard's own page".into(),
        ));
    }
    let mut cookie = Cookie::build(COOKIE, "")
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    cookie.make_removal();
    Ok(HttpResponse::NoContent().cookie(cookie).finish())
}

#[cfg(test)]
mod tests {
    use super::{cookie_proves, hex, session_cookie};

    const TOKEN: &str = "s3cret-token";

    #[test]
    fn the_cookie_proves_the_token_without_carrying_it() {
        let cookie = session_cookie(TOKEN).expect("a cookie");
        assert!(!cookie.contains(TOKEN), "{cookie}");
        assert!(!cookie.contains(&hex(TOKEN.as_bytes())), "{cookie}");
        assert!(cookie_proves(&cookie, TOKEN));
        assert_ne!(
            session_cookie(TOKEN),
            Some(cookie.clone()),
            "a new session each login"
        );
        assert!(
            !cookie_proves(&cookie, "another-token"),
            "a token change ends every session"
        );
    }

    #[test]
    fn a_forged_or_altered_cookie_is_refused() {
        let cookie = session_cookie(TOKEN).expect("a cookie");
        let (session, tag) = cookie.split_once('.').expect("id.mac");
        let flip = |text: &str, at: usize| {
            let mut bytes = text.as_bytes().to_vec();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).expect("ascii")
        };
        let other = session_cookie(TOKEN).expect("another cookie");
        let (_, other_tag) = other.split_once('.').expect("id.mac");
        for forged in [
            format!("{}.{tag}", flip(session, 0)),
            format!("{session}.{}", flip(tag, tag.len() - 1)),
            format!("{session}.{other_tag}"),
            format!("{session}.{}", &tag[..tag.len() - 2]),
            format!("{session}."),
            session.to_owned(),
            hex(TOKEN.as_bytes()),
            TOKEN.to_owned(),
            String::new(),
            format!("{session}.{}", "é".repeat(32)),
        ] {
            assert!(!cookie_proves(&forged, TOKEN), "{forged:?} was accepted");
        }
    }
}
