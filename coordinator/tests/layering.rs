//! The architecture invariants of `ARCHITECTURE.md` that a test can check, read from the sources.
//!
//! Sources are read as Rust tokens, so comments and strings never count. A file's module is its path
//! (`src/store/batch.rs` is `store::batch`); paths are resolved from `crate::`, `super::` and
//! `self::`, through `use` groups.
//!
//! - Each outside crate is named only in the modules that own it (diesel in `store/`, lapin in
//!   `amqp/`, actix-web in `web/`, the actor framework in `runtime/`); `app.rs` wires them together.
//! - `saga/` names nothing outside itself: no I/O crate, no wire contract, no other module.
//! - `amqp/` names nothing of the domain or the runtime.
//! - `web/http/` and `web/dashboard/` never name each other.
//! - No import circle: within any folder, its files and subfolders depend on each other without a
//!   cycle (a module may always use its own parent and children).
//! - The operator's command line (`operator/`) knows only the HTTP contract: its manifest names no
//!   crate of the service, and only `cli.rs` names it here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn each_outside_crate_is_named_only_where_it_is_owned() {
    let sources = Sources::read("src");
    let owners: &[(&str, &[&str])] = &[
        ("diesel", &["store"]),
        ("diesel_migrations", &["store"]),
        ("lapin", &["amqp"]),
        ("actix_web", &["web", "app"]),
        ("actix", &["runtime", "app"]),
        ("actix_rt", &["runtime", "app", "cli"]),
        // Outbound HTTP: check-backs to initiators, alerts to the operator's receiver, forwarding.
        (
            "reqwest",
            &["runtime::check_back", "runtime::alerts", "web::forward"],
        ),
        ("prometheus_client", &["metrics", "web::http::metrics"]),
        ("utoipa", &["web"]),
        ("operator", &["cli"]),
        ("opentelemetry", &["telemetry"]),
        ("opentelemetry_sdk", &["telemetry"]),
        ("opentelemetry_otlp", &["telemetry"]),
    ];
    let mut misplaced = Vec::new();
    for file in &sources.files {
        for (krate, allowed) in owners {
            if allowed
                .iter()
                .any(|a| file.module.is_within(&Module::parse(a)))
            {
                continue;
            }
            for line in file.names_crate(krate) {
                misplaced.push(format!("{}:{line} names {krate}", file.display));
            }
        }
    }
    assert!(
        misplaced.is_empty(),
        "an outside crate named where it is not owned (see ARCHITECTURE.md, invariants): {misplaced:#?}"
    );
}

#[test]
fn the_saga_domain_names_nothing_outside_itself() {
    let sources = Sources::read("src");
    let saga = Module::parse("saga");
    let forbidden_crates = [
        "diesel",
        "lapin",
        "actix",
        "actix_web",
        "actix_rt",
        "tokio",
        "reqwest",
        "contract",
        "futures_util",
    ];
    let mut found = Vec::new();
    for file in sources.files.iter().filter(|f| f.module.is_within(&saga)) {
        for krate in forbidden_crates {
            for line in file.names_crate(krate) {
                found.push(format!("{}:{line} names {krate}", file.display));
            }
        }
        for (target, line) in sources.references(file) {
            if !target.is_within(&saga) {
                found.push(format!("{}:{line} names crate::{target}", file.display));
            }
        }
    }
    assert!(
        found.is_empty(),
        "saga/ must stay pure (no I/O, no wire, no other module): {found:#?}"
    );
}

#[test]
fn the_amqp_edge_names_nothing_of_the_domain() {
    let sources = Sources::read("src");
    let amqp = Module::parse("amqp");
    let forbidden = ["saga", "wire", "runtime", "store", "web"].map(Module::parse);
    let mut found = Vec::new();
    for file in sources.files.iter().filter(|f| f.module.is_within(&amqp)) {
        for (target, line) in sources.references(file) {
            if forbidden.iter().any(|m| target.is_within(m)) {
                found.push(format!("{}:{line} names crate::{target}", file.display));
            }
        }
    }
    assert!(
        found.is_empty(),
        "amqp/ speaks only the contract: {found:#?}"
    );
}

#[test]
fn neither_half_of_the_web_edge_names_the_other() {
    let sources = Sources::read("src");
    let halves = [
        ("web::http", "web::dashboard"),
        ("web::dashboard", "web::http"),
    ];
    let mut found = Vec::new();
    for (half, other) in halves.map(|(a, b)| (Module::parse(a), Module::parse(b))) {
        for file in sources.files.iter().filter(|f| f.module.is_within(&half)) {
            for (target, line) in sources.references(file) {
                if target.is_within(&other) {
                    found.push(format!("{}:{line} names crate::{target}", file.display));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "web/http and web/dashboard must not name each other (move what both need to web/): {found:#?}"
    );
}

#[test]
fn no_module_imports_in_a_circle() {
    for root in [
        "src",
        "../participants/sdk/src",
        "../contract/src",
        "../operator/src",
    ] {
        let sources = Sources::read(root);
        let cycles = sources.cycles();
        assert!(
            cycles.is_empty(),
            "import circles under {root} (each: the modules in the circle, and a reference for each \
             step): {cycles:#?}"
        );
    }
}

#[test]
fn the_operators_command_line_knows_only_the_http_contract() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator/Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest).expect("operator/Cargo.toml");
    let forbidden = ["coordinator", "testkit", "participants", "diesel", "lapin"];
    let found: Vec<String> = dependencies(&manifest)
        .into_iter()
        .filter(|name| forbidden.contains(&name.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "operator/ talks to the coordinator only over HTTP (ARCHITECTURE.md, invariants); its \
         manifest depends on {found:?}"
    );
    let sources = Sources::read("../operator/src");
    let mut named = Vec::new();
    for file in &sources.files {
        for krate in forbidden {
            for line in file.names_crate(krate) {
                named.push(format!(
                    "operator/src/{}:{line} names {krate}",
                    file.display
                ));
            }
        }
    }
    assert!(named.is_empty(), "{named:#?}");
}

/// The crates a manifest depends on, in any `[*dependencies]` table (`name = ...`,
/// `name.workspace = true`) or as a `[*dependencies.name]` table; a renamed one also by its
/// `package`.
fn dependencies(manifest: &str) -> Vec<String> {
    enum Table {
        Dependencies,
        OneDependency,
        Other,
    }
    let mut found = Vec::new();
    let mut table = Table::Other;
    for line in manifest.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']').trim();
            table = match header.rsplit_once('.') {
                _ if header.ends_with("dependencies") => Table::Dependencies,
                Some((section, name)) if section.ends_with("dependencies") => {
                    found.push(name.trim_matches('"').to_string());
                    Table::OneDependency
                }
                _ => Table::Other,
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let package = || value.split('"').nth(1).map(str::to_string);
        match table {
            Table::Dependencies if !key.starts_with('#') => {
                found.push(
                    key.split('.')
                        .next()
                        .unwrap_or(key)
                        .trim_matches('"')
                        .to_string(),
                );
                if let Some((_, renamed)) = value.split_once("package") {
                    if renamed.trim_start().starts_with('=') {
                        found.extend(renamed.split('"').nth(1).map(str::to_string));
                    }
                }
            }
            Table::OneDependency if key == "package" => found.extend(package()),
            _ => {}
        }
    }
    found
}

#[test]
fn the_manifest_reader_finds_every_form_of_dependency() {
    let manifest = r#"
[package]
name = "x"
description = "not = a dependency"

[dependencies]
# coordinator = { path = "../coordinator" }
chrono.workspace = true
core = { package = "coordinator", path = "../coordinator" }

[dev-dependencies.testkit]
path = "../testkit"

[target.'cfg(unix)'.dependencies]
"lapin" = "4"

[build-dependencies.renamed]
package = "diesel"
"#;
    assert_eq!(
        dependencies(manifest),
        [
            "chrono",
            "core",
            "coordinator",
            "testkit",
            "lapin",
            "renamed",
            "diesel"
        ]
    );
}

/// The checker itself: groups, relative paths, comments and strings.
#[test]
fn the_checker_resolves_paths_as_rustc_would() {
    let modules: BTreeSet<Module> = ["", "a", "a::b", "a::c", "d"]
        .into_iter()
        .map(Module::parse)
        .collect();
    let file = SourceFile::parse(
        Module::parse("a::b"),
        "a/b.rs".into(),
        "use crate::d::{Thing, other::X};\n\
         use super::{c::{self, Y}, *};\n\
         // crate::d is a comment\n\
         const S: &str = \"crate::d\";\n\
         mod tests { use super::super::c::Z; }\n\
         fn f() { diesel::sql_query(\"x\"); not_diesel::x(); a::diesel::y(); }",
    );
    let targets: Vec<(String, usize)> = file
        .paths
        .iter()
        .map(|(path, line)| (resolve(&modules, path).to_string(), *line))
        .collect();
    assert_eq!(
        targets,
        [
            ("d".to_string(), 1),
            ("d".to_string(), 1),
            ("a::c".to_string(), 2),
            ("a::c".to_string(), 2),
            ("a".to_string(), 2),
            ("a::c".to_string(), 5),
        ]
    );
    assert_eq!(file.names_crate("diesel"), [6]);
}

/// A module path (`store::batch`); the crate root is empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Module(Vec<String>);

impl Module {
    fn parse(path: &str) -> Module {
        Module(
            path.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    fn is_within(&self, other: &Module) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl std::fmt::Display for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("::"))
    }
}

struct SourceFile {
    module: Module,
    display: String,
    /// Module-relative paths as written, made absolute (`crate` first), with their line.
    paths: Vec<(Vec<String>, usize)>,
    /// Every path that starts with a plain name (`diesel::x`), by first segment, with its line.
    outside: Vec<(String, usize)>,
}

impl SourceFile {
    fn parse(module: Module, display: String, source: &str) -> SourceFile {
        let tokens = tokens(source);
        let line_of = |offset: usize| source[..offset].matches('\n').count() + 1;
        let mut paths = Vec::new();
        let mut outside = Vec::new();
        // Inline modules (`mod tests { .. }`) shift what `super` and `self` mean.
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0usize;
        let mut i = 0;
        while i < tokens.len() {
            let text = tokens[i].text;
            let after_colons = i > 0 && tokens[i - 1].text == "::";
            match text {
                "{" => depth += 1,
                "}" => {
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                    depth = depth.saturating_sub(1);
                }
                "mod" if tokens.get(i + 2).is_some_and(|t| t.text == "{") => {
                    inline.push((tokens[i + 1].text.to_string(), depth + 1));
                }
                "crate" | "super" | "self" if !after_colons => {
                    let mut here = module.0.clone();
                    here.extend(inline.iter().map(|(name, _)| name.clone()));
                    let line = line_of(tokens[i].offset);
                    let (found, end) = path_at(&tokens, i, &here);
                    paths.extend(found.into_iter().map(|p| (p, line)));
                    i = end;
                    continue;
                }
                _ if !after_colons
                    && is_ident(text)
                    && tokens.get(i + 1).is_some_and(|t| t.text == "::") =>
                {
                    outside.push((text.to_string(), line_of(tokens[i].offset)));
                }
                _ => {}
            }
            i += 1;
        }
        SourceFile {
            module,
            display,
            paths,
            outside,
        }
    }

    fn names_crate(&self, krate: &str) -> Vec<usize> {
        self.outside
            .iter()
            .filter(|(first, _)| first == krate)
            .map(|(_, line)| *line)
            .collect()
    }
}

/// The absolute paths of the path starting at `at` (several for a `use` group), and where it ends.
fn path_at(tokens: &[Token<'_>], at: usize, here: &[String]) -> (Vec<Vec<String>>, usize) {
    let mut prefix: Vec<String> = Vec::new();
    let mut i = at;
    // Leading `crate`, `self` and `super`s.
    loop {
        match tokens.get(i).map(|t| t.text) {
            Some("crate") if i == at => prefix.clear(),
            Some("self") if i == at => prefix = here.to_vec(),
            Some("super") => {
                if i == at {
                    prefix = here.to_vec();
                }
                prefix.pop();
            }
            _ => break,
        }
        if tokens.get(i + 1).map(|t| t.text) != Some("::") {
            return (vec![prefix], i + 1);
        }
        i += 2;
    }
    let mut found = Vec::new();
    let end = rest_of_path(tokens, i, prefix, &mut found);
    (found, end)
}

/// Reads `a::b::{c, d::e}` from `at` onwards below `prefix`.
fn rest_of_path(
    tokens: &[Token<'_>],
    mut at: usize,
    mut prefix: Vec<String>,
    found: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match tokens.get(at).map(|t| t.text) {
            Some("{") => {
                at += 1;
                while let Some(text) = tokens.get(at).map(|t| t.text) {
                    match text {
                        "}" => return at + 1,
                        "," => at += 1,
                        "self" | "*" => {
                            found.push(prefix.clone());
                            at += 1;
                        }
                        "as" => at += 2,
                        _ => at = rest_of_path(tokens, at, prefix.clone(), found),
                    }
                }
                return at;
            }
            Some(text) if is_ident(text) => {
                prefix.push(text.to_string());
                if tokens.get(at + 1).map(|t| t.text) == Some("::") {
                    at += 2;
                } else {
                    found.push(prefix);
                    return at + 1;
                }
            }
            _ => {
                found.push(prefix);
                return at;
            }
        }
    }
}

/// The longest known module a path names.
fn resolve(modules: &BTreeSet<Module>, path: &[String]) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| Module(path[..n].to_vec()))
        .find(|m| modules.contains(m))
        .unwrap_or(Module(Vec::new()))
}

struct Sources {
    files: Vec<SourceFile>,
    modules: BTreeSet<Module>,
}

impl Sources {
    fn read(root: &str) -> Sources {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
        let mut files = Vec::new();
        for path in rust_files(&root) {
            let relative = path.strip_prefix(&root).unwrap_or(&path);
            let mut segments: Vec<String> = relative
                .iter()
                .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(
                segments.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                segments.pop();
            }
            let source = std::fs::read_to_string(&path).expect("a readable source file");
            files.push(SourceFile::parse(
                Module(segments),
                relative.display().to_string(),
                &source,
            ));
        }
        assert!(!files.is_empty(), "no sources under {}", root.display());
        let modules = files.iter().map(|f| f.module.clone()).collect();
        Sources { files, modules }
    }

    /// The modules of this crate a file names, other than itself and its ancestors.
    fn references<'a>(
        &'a self,
        file: &'a SourceFile,
    ) -> impl Iterator<Item = (Module, usize)> + 'a {
        file.paths
            .iter()
            .filter(|(path, _)| !path.is_empty())
            .map(|(path, line)| (resolve(&self.modules, path), *line))
            .filter(|(target, _)| !file.module.is_within(target))
    }

    /// Import circles among the children of every module: `a -> b` when something under `a` names
    /// something under its sibling `b`.
    fn cycles(&self) -> Vec<String> {
        let mut edges: BTreeMap<Module, BTreeMap<(String, String), String>> = BTreeMap::new();
        for file in &self.files {
            for (target, line) in self.references(file) {
                if target.is_within(&file.module) {
                    continue; // a module uses its own children
                }
                let common = file
                    .module
                    .0
                    .iter()
                    .zip(&target.0)
                    .take_while(|(a, b)| a == b)
                    .count();
                let parent = Module(file.module.0[..common].to_vec());
                let from = file.module.0[common].clone();
                let to = target.0[common].clone();
                edges
                    .entry(parent)
                    .or_default()
                    .entry((from, to))
                    .or_insert_with(|| format!("{}:{line} names crate::{target}", file.display));
            }
        }
        let mut cycles = Vec::new();
        for (parent, edges) in &edges {
            if let Some(cycle) = find_cycle(edges) {
                let steps: Vec<String> = cycle
                    .windows(2)
                    .map(|w| edges[&(w[0].clone(), w[1].clone())].clone())
                    .collect();
                cycles.push(format!(
                    "in {}: {} ({})",
                    if parent.0.is_empty() {
                        "the crate root".to_string()
                    } else {
                        parent.to_string()
                    },
                    cycle.join(" -> "),
                    steps.join("; ")
                ));
            }
        }
        cycles
    }
}

/// One cycle of a directed graph, as its nodes with the first repeated at the end.
fn find_cycle(edges: &BTreeMap<(String, String), String>) -> Option<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    fn visit(
        node: &String,
        edges: &BTreeMap<(String, String), String>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for (_, to) in edges.keys().filter(|(from, _)| from == node) {
            if let Some(cycle) = visit(to, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    nodes
        .into_iter()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a readable directory") {
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

fn is_ident(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text.chars().all(is_ident_char)
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
