//! The layer order of ARCHITECTURE.md, enforced: every `crate::` path in `src/` (comments and test modules left
//! out) may point only to a module of the same or a lower layer, and the modules must not import each other in a
//! circle. The table checked is the one ARCHITECTURE.md shows (its rows `| L<n> ... | `module`, ... |`), so the
//! document and the code cannot drift apart. No database needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → (layer number, layer name), read from ARCHITECTURE.md.
fn layer_table(doc: &str) -> BTreeMap<String, (usize, String)> {
    let mut table = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| L3 database servers | `tenant` | ..." → ["", "L3 database servers", "`tenant`", ...]
        let (Some(name), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Some(number) = name
            .strip_prefix('L')
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        for module in modules.split('`').skip(1).step_by(2) {
            table.insert(module.to_owned(), (number, name.to_string()));
        }
    }
    table
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments, string literals and `#[cfg(test)]` modules.
fn code_only(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            // A test module: skip it to its closing brace at the same indentation.
            let indent = line.len() - trimmed.len();
            let closing = format!("{}}}", " ".repeat(indent));
            for inner in lines.by_ref() {
                if inner == closing {
                    break;
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    // Comments, string and char literals (paths in messages are not imports; '"' opens no string).
    let chars: Vec<char> = out.chars().collect();
    let mut cleaned = String::with_capacity(out.len());
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
                while i < chars.len() && !(chars[i - 1] == '*' && chars[i] == '/') {
                    i += 1;
                }
                i += 1;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                cleaned.push_str("\"\"");
            }
            '\'' if chars.get(i + 1) == Some(&'\\') => {
                // An escaped char literal: '\n', '\'', '\u{..}'.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            }
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 3,
            c => {
                cleaned.push(c);
                i += 1;
            }
        }
    }
    cleaned
}

/// The top-level modules a file's `crate::` paths name, including those inside `use crate::{a, b::c}` groups.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mandant_crate::` or similar, not the crate root
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: at brace depth 0, after `{` or `,`.
            let mut depth = 0;
            let mut expecting = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expecting = true,
                    c if expecting && (c.is_alphanumeric() || c == '_') => name.push(c),
                    _ => {
                        if expecting && !name.is_empty() {
                            found.insert(std::mem::take(&mut name));
                            expecting = false;
                        }
                    }
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found.remove("self");
    found
}

/// Every (file, importing module, imported module) edge of `src/`, main.rs and lib.rs left out.
fn edges(src: &Path) -> Vec<(String, String, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut edges = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let relative = relative.to_string_lossy().to_string();
        if relative == "main.rs" || relative == "lib.rs" {
            continue;
        }
        let module = relative
            .split('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&file).expect("read file");
        for target in crate_imports(&code_only(&text)) {
            if target != module {
                edges.push((format!("src/{relative}"), module.clone(), target));
            }
        }
    }
    edges
}

/// A circle in the module graph, if any (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

/// The violations of `table` in `edges`, one sentence each.
fn violations(
    table: &BTreeMap<String, (usize, String)>,
    edges: &[(String, String, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, from, to) in edges {
        let (Some((from_layer, from_name)), Some((to_layer, to_name))) =
            (table.get(from), table.get(to))
        else {
            for module in [from, to] {
                if !table.contains_key(module) {
                    problems.push(format!(
                        "{file}: module `{module}` is not in ARCHITECTURE.md's layer table"
                    ));
                }
            }
            continue;
        };
        if to_layer > from_layer {
            problems.push(format!(
                "{file} imports crate::{to} ({to_name}) from `{from}` ({from_name}): imports go down the layers only"
            ));
        }
        graph.entry(from.clone()).or_default().insert(to.clone());
    }
    if let Some(cycle) = find_cycle(&graph) {
        let files: Vec<&str> = cycle
            .windows(2)
            .filter_map(|pair| {
                edges
                    .iter()
                    .find(|(_, f, t)| *f == pair[0] && *t == pair[1])
                    .map(|(file, _, _)| file.as_str())
            })
            .collect();
        problems.push(format!(
            "modules import each other in a circle: {} (through {})",
            cycle.join(" -> "),
            files.join(", ")
        ));
    }
    problems.sort();
    problems.dedup();
    problems
}

#[test]
fn every_import_goes_down_the_layer_table_of_architecture_md_and_none_forms_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let table = layer_table(&doc);
    assert!(
        table.len() >= 10,
        "ARCHITECTURE.md's layer table was not found (rows like `| L0 foundations | `db`, `domain` | ... |`): {table:?}"
    );
    let edges = edges(&root.join("src"));
    assert!(!edges.is_empty(), "no crate:: imports found under src/");
    let problems = violations(&table, &edges);
    assert!(
        problems.is_empty(),
        "layer violations:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_layer_check_catches_an_upward_import_and_a_circle() {
    let table = layer_table(
        "| L0 foundations | `db` | |\n| L4 services | `data`, `fanout` | |\n| L6 edges | `http` | |\n",
    );
    let upward = crate_imports(&code_only(
        "use crate::{db::PgTarget, http::error::{ApiError, x}};\n// use crate::workers;\nlet s = \"crate::cli\";\n",
    ));
    assert_eq!(upward, BTreeSet::from(["db".to_owned(), "http".to_owned()]));
    let edges: Vec<(String, String, String)> = upward
        .into_iter()
        .map(|to| ("src/data/mod.rs".to_owned(), "data".to_owned(), to))
        .chain([(
            "src/fanout/mod.rs".to_owned(),
            "fanout".to_owned(),
            "data".to_owned(),
        )])
        .chain([(
            "src/data/x.rs".to_owned(),
            "data".to_owned(),
            "fanout".to_owned(),
        )])
        .collect();
    let problems = violations(&table, &edges);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("src/data/mod.rs imports crate::http (L6 edges)")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("circle: data -> fanout -> data")),
        "{problems:?}"
    );
    let test_module = code_only("fn a() {}\n#[cfg(test)]\nmod tests {\n    use crate::http;\n}\n");
    assert!(crate_imports(&test_module).is_empty());
}
