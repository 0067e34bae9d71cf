//! How the coordinator and participants read `SAGA_AMQP_URL`: one broker, or the nodes of a
//! RabbitMQ cluster as a comma-separated list that each (re)connection walks in turn.
//!
//! Written once so that both ends split and redact a list alike. A comma inside a password must be
//! percent-encoded (`%2C`), as AMQP URLs percent-decode their user information.

/// The URLs of a `SAGA_AMQP_URL` list, in order, without surrounding spaces or empty entries.
/// Never empty: a value with no URL in it is returned as the one URL, for the connection attempt
/// to report.
pub fn amqp_urls(list: &str) -> Vec<String> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        vec![list.to_string()]
    } else {
        urls
    }
}

/// The URL (or comma-separated list of URLs) with every password replaced by `***`, for logs.
pub fn redact_urls(list: &str) -> String {
    list.split(',')
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// One URL with its password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_on_commas() {
        assert_eq!(
            amqp_urls("amqp://a:5672/%2f"),
            vec!["amqp://a:5672/%2f".to_string()]
        );
        assert_eq!(
            amqp_urls(" amqp://a:5681/%2f, amqp://b:5682/%2f,,amqp://c:5683/%2f ,"),
            vec![
                "amqp://a:5681/%2f".to_string(),
                "amqp://b:5682/%2f".to_string(),
                "amqp://c:5683/%2f".to_string(),
            ]
        );
        assert_eq!(amqp_urls(""), vec![String::new()]);
        assert_eq!(amqp_urls(" , "), vec![" , ".to_string()]);
    }

    #[test]
    fn every_password_of_a_list_is_hidden() {
        assert_eq!(
            redact_url("amqp://guest:secret@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(redact_url("amqp://guest@h/%2f"), "amqp://guest@h/%2f");
        assert_eq!(
            redact_urls("amqp://u:one@a:5681/%2f,amqp://u:two@b:5682/%2f"),
            "amqp://u:***@a:5681/%2f,amqp://u:***@b:5682/%2f"
        );
        // A password with an encoded comma stays one URL, and hidden.
        let list = "amqp://u:p%2Cq@a/%2f";
        assert_eq!(amqp_urls(list).len(), 1);
        assert_eq!(redact_urls(list), "amqp://u:***@a/%2f");
    }
}
