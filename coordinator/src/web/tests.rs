//! The shape of the web edge: its two halves know their parent, never each other.

use std::path::{Path, PathBuf};

/// `http/` never names the `dashboard` module and `dashboard/` never names the `http` module: what
/// both need (state, authentication, errors, the saga document) lives in `web/` itself. Names are
/// read as Rust tokens, so comments and strings (`"/dashboard/api"`) do not count, and neither do
/// other modules of the same name (`store::dashboard`, `actix_web::http`).
#[test]
fn neither_half_of_the_web_edge_names_the_other() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web");
    let halves = [
        ("http", "dashboard", "store"),
        ("dashboard", "http", "actix_web"),
    ];
    let mut crossings = Vec::new();
    for (half, other, other_owner) in halves {
        let files = rust_files(&web.join(half));
        assert!(!files.is_empty(), "no sources under web/{half}");
        for file in files {
            let source = std::fs::read_to_string(&file).expect("a readable source file");
            let tokens = tokens(&source);
            for (i, token) in tokens.iter().enumerate() {
                if token.text == other && owner(&tokens, i) != Some(other_owner) {
                    let line = source[..token.offset].matches('\n').count() + 1;
                    let path = file.strip_prefix(&web).unwrap_or(&file);
                    crossings.push(format!("web/{}:{line}", path.display()));
                }
            }
        }
    }
    assert!(
        crossings.is_empty(),
        "web/http and web/dashboard must not name each other (move what both need to web/): \
         {crossings:#?}"
    );
}

/// The checker sees through groups and ignores comments and strings.
#[test]
fn the_checker_finds_a_crossing_however_it_is_written() {
    let names = |source: &str| -> Vec<Option<&'static str>> {
        let tokens = tokens(source);
        (0..tokens.len())
            .filter(|&i| tokens[i].text == "http")
            .map(|i| match owner(&tokens, i) {
                Some("actix_web") => Some("actix_web"),
                Some(_) => Some("other"),
                None => None,
            })
            .collect()
    };
    assert_eq!(names("use crate::web::http::sagas;"), [Some("other")]);
    assert_eq!(
        names("use crate::web::{\n error::ApiError,\n http::sagas };"),
        [Some("other")]
    );
    assert_eq!(names("use super::super::{http};"), [Some("other")]);
    assert_eq!(names("fn f() { http::x() }"), [None]);
    assert_eq!(
        names("use actix_web::{http::header, web};"),
        [Some("actix_web")]
    );
    assert_eq!(
        names("// see http::x\nconst A: &str = \"http::x\"; const B: &str = r#\"http\"#;"),
        []
    );
    assert_eq!(
        names("const C: char = '\"'; use super::http;"),
        [Some("other")]
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).expect("a readable directory");
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

struct Token<'a> {
    text: &'a str,
    offset: usize,
}

/// Identifiers and punctuation (`::` as one token), without comments, strings and char literals.
fn tokens(source: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut offset = 0;
    while let Some(c) = source[offset..].chars().next() {
        let rest = &source[offset..];
        let len = if c.is_whitespace() {
            c.len_utf8()
        } else if rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if rest.starts_with("/*") {
            rest.find("*/").map_or(rest.len(), |end| end + 2)
        } else if let Some(len) = raw_string(rest).or_else(|| literal(rest)) {
            len
        } else {
            let len = if is_ident_char(c) {
                rest.find(|c| !is_ident_char(c)).unwrap_or(rest.len())
            } else if rest.starts_with("::") {
                2
            } else {
                c.len_utf8()
            };
            tokens.push(Token {
                text: &rest[..len],
                offset,
            });
            len
        };
        offset += len;
    }
    tokens
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Length of a raw string literal (`r"..."`, `r#"..."#`, `br"..."`) at the start of `rest`.
fn raw_string(rest: &str) -> Option<usize> {
    let after_r = rest.strip_prefix('r').or_else(|| rest.strip_prefix("br"))?;
    let hashes = after_r.len() - after_r.trim_start_matches('#').len();
    let body = after_r[hashes..].strip_prefix('"')?;
    let end = format!("\"{}", "#".repeat(hashes));
    let close = body.find(&end)?;
    Some(rest.len() - body.len() + close + end.len())
}

/// Length of a string or char literal at the start of `rest` (a lifetime such as `'a` is none).
fn literal(rest: &str) -> Option<usize> {
    if let Some(body) = rest.strip_prefix('"') {
        let mut escaped = false;
        for (at, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return Some(at + 2),
                _ => {}
            }
        }
        return Some(rest.len());
    }
    let body = rest.strip_prefix('\'')?;
    if body.starts_with('\\') {
        return body[2..].find('\'').map(|at| at + 4);
    }
    let c = body.chars().next()?;
    body[c.len_utf8()..]
        .starts_with('\'')
        .then(|| c.len_utf8() + 2)
}

/// The module a path segment hangs from: the segment before its `::`, or the one before the `::{`
/// of the `use` group it is listed in. `None` when the segment starts its path.
fn owner<'a>(tokens: &[Token<'a>], at: usize) -> Option<&'a str> {
    let before = |i: usize| i.checked_sub(1).map(|p| tokens[p].text);
    match before(at)? {
        "::" => before(at - 1),
        "{" | "," => {
            // Listed in a group: find the group's own `{`, past any groups nested before it.
            let mut depth = 0usize;
            for i in (0..at).rev() {
                match tokens[i].text {
                    "}" => depth += 1,
                    "{" if depth > 0 => depth -= 1,
                    "{" => return (before(i) == Some("::")).then(|| before(i - 1)).flatten(),
                    "::" | "," | "*" => {}
                    text if depth > 0 || text.chars().all(is_ident_char) => {}
                    _ => return None,
                }
            }
            None
        }
        _ => None,
    }
}
