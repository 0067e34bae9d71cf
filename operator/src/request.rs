//! One request to the coordinator's API, as every verb describes it: the client sends it, the verbs
//! build it.

use reqwest::Method;
use serde_json::Value;

/// One request to the API: a path below `/api/v1/{resource}`, its query, and a JSON body.
#[derive(Debug, PartialEq)]
pub struct Request {
    /// `sagas`, `saga-names` for what applies to every saga of a name, or `bulk-actions`.
    pub resource: &'static str,
    pub method: Method,
    pub path: Vec<String>,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

impl Request {
    pub(crate) fn get(path: &[&str]) -> Request {
        Request {
            resource: "sagas",
            method: Method::GET,
            path: path.iter().map(|s| s.to_string()).collect(),
            query: Vec::new(),
            body: None,
        }
    }

    /// `GET /api/v1/bulk-actions/{path...}`.
    pub(crate) fn bulk(path: &[&str]) -> Request {
        Request {
            resource: "bulk-actions",
            ..Request::get(path)
        }
    }

    /// An operator's action on one saga: `POST /api/v1/sagas/{id}/{action}`.
    pub(crate) fn act(id: &str, action: &str) -> Request {
        Request {
            method: Method::POST,
            ..Request::get(&[id, action])
        }
    }

    /// `POST /api/v1/saga-names/{name}/{action}`.
    pub(crate) fn act_on_name(name: &str, action: &str) -> Request {
        Request {
            resource: "saga-names",
            ..Request::act(name, action)
        }
    }
}
