//! ARCHITECTURE.md, "Every statement that writes `sagas` counts what it wrote": read from the
//! sources, every SQL string that inserts, updates or deletes `sagas` also appends to
//! `saga_state_count_changes`, in the same statement (the same string literal). Store tests, which
//! write rows as fixtures, are left out.

use std::path::{Path, PathBuf};

/// Where statements against the coordinator's database are written, from this crate's directory.
const ROOTS: [&str; 3] = ["src", "../bench/src", "../operator/src"];

#[test]
fn every_statement_that_writes_sagas_counts_its_changes() {
    let writes = regex::Regex::new(r"(?i)\b(insert\s+into|update|delete\s+from)\s+sagas\b")
        .expect("a valid pattern");
    let mut statements = 0;
    let mut uncounted = Vec::new();
    for root in ROOTS {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
        for path in rust_files(&root) {
            let name = path.display().to_string();
            if name.ends_with("_tests.rs") || name.ends_with("test_db.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("a readable source file");
            for literal in string_literals(&source) {
                if writes.is_match(&literal) {
                    statements += 1;
                    if !literal.contains("saga_state_count_changes") {
                        uncounted.push(format!("{name}: {}", line_writing(&writes, &literal)));
                    }
                }
            }
        }
    }
    assert!(
        statements >= 3,
        "the batch statement, the purge and the seed write sagas; found {statements} statements"
    );
    assert!(
        uncounted.is_empty(),
        "statements that write `sagas` without appending their changes to \
         saga_state_count_changes (see store/state_counts.rs):\n{}",
        uncounted.join("\n")
    );
}

#[test]
fn string_literals_are_found_whole() {
    let source = r###"
        // "not a literal"
        const A: &str = "one \"quoted\" two";
        const B: &str = r#"raw "inner" text"#;
        let c = 'x';
    "###;
    assert_eq!(
        string_literals(source),
        vec![
            r#"one \"quoted\" two"#.to_string(),
            r#"raw "inner" text"#.to_string()
        ]
    );
}

fn line_writing<'a>(writes: &regex::Regex, literal: &'a str) -> &'a str {
    literal
        .lines()
        .map(str::trim)
        .find(|l| writes.is_match(l))
        .unwrap_or("")
}

/// The contents of every string literal (plain and raw) outside comments, escapes kept as written.
fn string_literals(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let mut literals = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            // A char literal such as '"' or '\'' (a lifetime has no closing quote close by).
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 3,
            '\'' if chars.get(i + 1) == Some(&'\\') && chars.get(i + 3) == Some(&'\'') => i += 4,
            'r' if matches!(chars.get(i + 1), Some('#' | '"'))
                && (i == 0 || !chars[i - 1].is_alphanumeric() && chars[i - 1] != '_') =>
            {
                let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
                let open = i + 1 + hashes;
                if chars.get(open) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let close: String = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let rest: String = chars[open + 1..].iter().collect();
                let end = rest.find(&close).unwrap_or(rest.len());
                literals.push(rest[..end].to_string());
                i = open + 1 + rest[..end].chars().count() + close.chars().count();
            }
            '"' => {
                let start = i + 1;
                i = start;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                literals.push(chars[start..i.min(chars.len())].iter().collect());
                i += 1;
            }
            _ => i += 1,
        }
    }
    literals
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
