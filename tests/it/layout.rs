//! The layout test: the crate's module graph has no cycle and its named directions hold
//! (docs/style.md: "the folder layout is the architecture", data flows one way).
//!
//! Every `src/**/*.rs` file is read (except `src/main.rs` and `src/bin/`, the binary's own crate
//! root, which only calls the library). A file is a module: `src/lib.rs` is the crate root
//! (`crate`), `src/x.rs` and `src/x/mod.rs` are `x`, `src/x/y.rs` is `x::y`. Its dependencies are
//! the paths in its code: every `use` tree (`use super::{a, b::C}`, `pub use` re-exports too) and
//! every path that starts with `crate::`, `super::`, `self::` or, outside inline modules, the name
//! of one of the file's own child modules (`server::router` in `engine/mod.rs`). `super` and
//! `self` resolve against the file's module and any inline `mod x { }` around them; a path then
//! points at the longest prefix that is a file (`crate::relay::protocol::close::TRY_AGAIN` is
//! `relay::protocol`). `mod x;` declarations are not dependencies.
//!
//! A small scanner blanks what is not code first: line, block and doc comments, string, raw
//! string, byte string and char literals, and every `#[cfg(test)]` item (unit tests may reach
//! anywhere; their `use super::*` is not a dependency).
//!
//! Checked:
//! 1. the graph between top-level modules (`auth`, `engine`, `http`, `relay`, ...) is acyclic;
//! 2. inside each folder module, the graph between its files is acyclic: `mod.rs` sits on top
//!    (declarations, re-exports, entry points), so a child that takes an item from `mod.rs`
//!    while `mod.rs` uses that child is a cycle, and the shared item belongs in a leaf file;
//! 3. the named directions, directly or through other modules: `relay` never reaches `http`, and
//!    the reference engine (`engine`) never reaches `relay`, `http`, `store` or `runlog`.
//!
//! A cycle is shown as `a -> b -> a` with the file, line and path of each edge.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// `(from, to)`: `from` must not depend on `to`, directly or through other modules.
const FORBIDDEN: &[(&str, &str)] = &[
    ("relay", "http"),
    ("engine", "relay"),
    ("engine", "http"),
    ("engine", "store"),
    ("engine", "runlog"),
];

/// Cycles between the files of a folder that are known and not fixed yet: the folder, every
/// module of the tangle, and why it is still there. Anything else fails, and so does an entry
/// whose tangle changed or is gone (delete it), so this list only shrinks.
const KNOWN_CYCLES: &[(&str, &[&str], &str)] = &[];

#[test]
fn module_graphs_have_no_cycles_and_keep_their_directions() {
    let files = read_src(Path::new(env!("CARGO_MANIFEST_DIR")));
    let edges = dependencies(&files);
    // The scan must see the crate (a scanner that finds nothing would pass everything).
    for (from, to) in [
        ("engine::server", "engine::executor"),
        ("engine::executor", "engine::elements"),
        ("http", "relay::context"),
        ("workflow::validate", "workflow::normalize"),
        ("cli", "engine"),
    ] {
        assert!(
            edges.iter().any(|e| e.source() == from && e.target() == to),
            "the layout scan missed {from} -> {to}; is the scanner broken?"
        );
    }
    let problems = layout_problems(&edges, KNOWN_CYCLES);
    assert!(
        problems.is_empty(),
        "the module layout has {} problem(s):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
    println!(
        "engine files:\n{}",
        graph_text(&folder_graph(&edges, "engine"))
    );
}

#[test]
fn layout_check_reports_cycles_with_their_edges_and_forbidden_imports() {
    let files = vec![
        file(
            "src/lib.rs",
            "pub mod engine;\npub mod http;\npub mod relay;\n",
        ),
        file(
            "src/engine/mod.rs",
            "pub mod elements;\npub mod executor;\npub mod extra;\npub use executor::Executor;\n",
        ),
        file(
            "src/engine/executor.rs",
            "use super::elements::{self, Outcome};\npub struct Executor;\n",
        ),
        file(
            "src/engine/elements.rs",
            "pub struct Outcome;\nfn f() {\n    let _ = super::Executor;\n}\n",
        ),
        file("src/engine/extra.rs", "use crate::relay;\n"),
        file(
            "src/relay.rs",
            "pub fn r() {\n    crate::engine::go();\n    crate::http::h();\n}\n",
        ),
        file("src/http.rs", "use crate::relay::r;\n"),
    ];
    let problems = layout_problems(&dependencies(&files), &[]).join("\n\n");
    // Inside engine/: mod.rs re-exports executor, executor uses elements, elements uses mod.rs.
    let inside = "a cycle between the files of engine/: \
        engine -> engine::executor -> engine::elements -> engine\n  \
        engine -> engine::executor: src/engine/mod.rs:4 `executor::Executor`\n  \
        engine::executor -> engine::elements: src/engine/executor.rs:1 `super::elements`\n  \
        engine::elements -> engine: src/engine/elements.rs:3 `super::Executor`";
    assert!(problems.contains(inside), "{problems}");
    // Between top-level modules: cycles until every module of the tangle is on one.
    let between = "a cycle between top-level modules: engine -> relay -> engine\n  \
        engine -> relay: src/engine/extra.rs:1 `crate::relay`\n  \
        relay -> engine: src/relay.rs:2 `crate::engine::go`\n\
        and: http -> relay -> http\n  \
        http -> relay: src/http.rs:1 `crate::relay::r`\n  \
        relay -> http: src/relay.rs:3 `crate::http::h`\n  \
        (engine, http, relay all reach each other)";
    assert!(problems.contains(between), "{problems}");
    // The named directions, direct or through another module.
    for expected in [
        "`relay` must not depend on `http`: relay -> http\n  \
         relay -> http: src/relay.rs:3 `crate::http::h`",
        "`engine` must not depend on `relay`: engine -> relay\n",
        "`engine` must not depend on `http`: engine -> relay -> http\n",
    ] {
        assert!(
            problems.contains(expected),
            "{expected}\nnot in:\n{problems}"
        );
    }
    assert_eq!(problems.matches("\n\n").count(), 4, "{problems}");

    // The same crate without the back edges passes.
    let fine = vec![
        file("src/lib.rs", "pub mod engine;\npub mod relay;\n"),
        file(
            "src/engine/mod.rs",
            "pub mod a;\npub mod b;\npub use a::A;\n",
        ),
        file("src/engine/a.rs", "use super::b::B;\npub struct A(B);\n"),
        file("src/engine/b.rs", "pub struct B;\n"),
        file("src/relay.rs", "use crate::engine::A;\n"),
    ];
    assert_eq!(
        layout_problems(&dependencies(&fine), &[]),
        Vec::<String>::new()
    );

    // A known cycle is let through only while it is exactly the known one.
    let known: &[(&str, &[&str], &str)] = &[(
        "engine",
        &["engine", "engine::elements", "engine::executor"],
        "test",
    )];
    let problems = layout_problems(&dependencies(&files), known).join("\n\n");
    assert!(!problems.contains("the files of engine/"), "{problems}");
    let stale = layout_problems(&dependencies(&fine), known).join("\n\n");
    assert!(
        stale.contains("the known cycle between the files of engine/ (engine, engine::elements, engine::executor) is gone"),
        "{stale}"
    );
}

#[test]
fn the_scanner_reads_only_code() {
    let text = r####"//! Uses crate::relay in a doc comment.
use super::a::{self, B as C, d::*};
/* crate::http /* nested crate::store */ still a comment crate::runlog */
const S: &str = "crate::http \" crate::store";
const R: &str = r#"crate::http " crate::store"#;
const B: &[u8] = br"crate::runlog";
const Q: char = '"';
const E: char = '\'';
fn f<'a>(x: &'a str) -> &'a str {
    let _ = crate::config::Config::default(); // crate::auth
    x
}
pub(super) fn g() {}
pub(in crate::store) fn h() {}
mod inner {
    use super::super::e;
    fn i() { let _ = super::f; }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;
}
fn after() { self::inner::j(); child::k(); }
"####;
    let files = vec![
        file("src/lib.rs", "pub mod x;\npub mod config;\npub mod a;\n"),
        file("src/x/mod.rs", text),
        file("src/x/child.rs", ""),
        file("src/config.rs", ""),
        file("src/a/mod.rs", "pub mod d;\n"),
        file("src/a/d.rs", ""),
        file("src/e.rs", ""),
    ];
    let found: Vec<String> = dependencies(&files)
        .iter()
        .map(|e| format!("{} {} {}", e.line, e.target(), e.path))
        .collect();
    assert_eq!(
        found,
        [
            "2 a super::a",
            "2 a super::a::B",
            "2 a::d super::a::d::*",
            "10 config crate::config::Config::default",
            "16 e super::super::e",
            "24 x::child child::k",
        ],
    );
}

// ---------------------------------------------------------------------------------------------

struct SourceFile {
    /// Relative to the package root, with `/` separators (`src/engine/mod.rs`).
    path: String,
    text: String,
}

fn file(path: &str, text: &str) -> SourceFile {
    SourceFile {
        path: path.into(),
        text: text.into(),
    }
}

/// Every `src/**/*.rs` of the library, sorted by path.
fn read_src(root: &Path) -> Vec<SourceFile> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(root).expect("under the root");
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push(SourceFile { path: rel, text });
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &root.join("src"), &mut out);
    out.retain(|f| f.path != "src/main.rs" && !f.path.starts_with("src/bin/"));
    out.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(out.len() > 10, "found only {} files under src/", out.len());
    out
}

/// The module a file is: `src/lib.rs` → `[]`, `src/x/mod.rs` → `[x]`, `src/x/y.rs` → `[x, y]`.
fn module_of(path: &str) -> Vec<String> {
    let inner = path
        .strip_prefix("src/")
        .and_then(|p| p.strip_suffix(".rs"))
        .unwrap_or_else(|| panic!("{path} is not a source file under src/"));
    let mut segments: Vec<String> = inner.split('/').map(String::from).collect();
    if segments.last().is_some_and(|s| s == "mod") || inner == "lib" {
        segments.pop();
    }
    segments
}

fn module_name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

/// One dependency of a file module on another, with where it was found.
#[derive(Debug, Clone)]
struct Edge {
    from: Vec<String>,
    to: Vec<String>,
    file: String,
    line: usize,
    /// The path as written (a `use` tree is shown one leaf at a time).
    path: String,
}

impl Edge {
    fn source(&self) -> String {
        module_name(&self.from)
    }
    fn target(&self) -> String {
        module_name(&self.to)
    }
    fn at(&self) -> String {
        format!("{}:{} `{}`", self.file, self.line, self.path)
    }
}

/// The dependencies of every file, in file and line order.
fn dependencies(files: &[SourceFile]) -> Vec<Edge> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&f.path)).collect();
    let mut edges = Vec::new();
    for f in files {
        let module = module_of(&f.path);
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(&module))
            .map(|m| m[module.len()].clone())
            .collect();
        for (line, inline, path) in paths(&f.text) {
            let relative_child = inline.is_empty() && children.contains(&path[0]);
            let known_start = matches!(path[0].as_str(), "crate" | "super" | "self");
            if !known_start && !relative_child {
                continue;
            }
            let mut current = module.clone();
            current.extend(inline);
            let Some(to) = resolve(&current, &path, &modules) else {
                continue;
            };
            if to != module {
                edges.push(Edge {
                    from: module.clone(),
                    to,
                    file: f.path.clone(),
                    line,
                    path: path.join("::"),
                });
            }
        }
    }
    edges
}

/// The file module a path points at, seen from module `current`.
fn resolve(
    current: &[String],
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut full: Vec<String> = match path[0].as_str() {
        "crate" => Vec::new(),
        _ => current.to_vec(),
    };
    let mut rest = match path[0].as_str() {
        "crate" | "self" => &path[1..],
        _ => path,
    };
    while rest.first().is_some_and(|s| s == "super") {
        full.pop()?;
        rest = &rest[1..];
    }
    full.extend(rest.iter().filter(|s| *s != "self" && *s != "*").cloned());
    (0..=full.len())
        .rev()
        .map(|n| full[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
}

// --- The scanner -----------------------------------------------------------------------------

/// `text` with comments, literals and `#[cfg(test)]` items replaced by spaces (newlines kept, so
/// line numbers stay right).
fn code_only(text: &str) -> Vec<char> {
    let s: Vec<char> = text.chars().collect();
    let n = s.len();
    let mut out = s.clone();
    let wipe = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(n)] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < n {
        let next = s.get(i + 1).copied();
        let end = match s[i] {
            '/' if next == Some('/') => (i..n).find(|&k| s[k] == '\n').unwrap_or(n),
            '/' if next == Some('*') => {
                let (mut k, mut depth) = (i + 2, 1);
                while k < n && depth > 0 {
                    if s[k] == '/' && s.get(k + 1) == Some(&'*') {
                        depth += 1;
                        k += 2;
                    } else if s[k] == '*' && s.get(k + 1) == Some(&'/') {
                        depth -= 1;
                        k += 2;
                    } else {
                        k += 1;
                    }
                }
                k
            }
            // r"..", r#".."#, br"..", cr"..": a raw string (`r#ident` is a raw identifier).
            'r' if i == 0
                || !ident(s[i - 1])
                || (matches!(s[i - 1], 'b' | 'c') && (i < 2 || !ident(s[i - 2]))) =>
            {
                let hashes = s[i + 1..].iter().take_while(|&&c| c == '#').count();
                if s.get(i + 1 + hashes) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let mut k = i + 2 + hashes;
                while k < n && !(s[k] == '"' && (1..=hashes).all(|h| s.get(k + h) == Some(&'#'))) {
                    k += 1;
                }
                k + 1 + hashes
            }
            '"' => {
                let mut k = i + 1;
                while k < n && s[k] != '"' {
                    k += if s[k] == '\\' { 2 } else { 1 };
                }
                k + 1
            }
            // '\n', '\'', '\u{..}'; a lifetime or label (`'a`) has no closing quote.
            '\'' if next == Some('\\') => (i + 3..n).find(|&k| s[k] == '\'').map_or(n, |k| k + 1),
            '\'' if s.get(i + 2) == Some(&'\'') => i + 3,
            _ => {
                i += 1;
                continue;
            }
        };
        wipe(&mut out, i, end);
        i = end;
    }
    // `#[cfg(test)]` items: up to the `;` or the `}` that closes the item.
    let attribute: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + attribute.len() <= n {
        if out[i..i + attribute.len()] != attribute[..] {
            i += 1;
            continue;
        }
        // Braces, and brackets or parentheses (a `;` in `[u8; 4]` does not end the item).
        let (mut k, mut depth, mut nested) = (i + attribute.len(), 0, 0);
        while k < n {
            match out[k] {
                '{' => depth += 1,
                '}' if depth == 1 => break,
                '}' => depth -= 1,
                '(' | '[' => nested += 1,
                ')' | ']' => nested -= 1,
                ';' if depth == 0 && nested == 0 => break,
                _ => {}
            }
            k += 1;
        }
        wipe(&mut out, i, k + 1);
        i = k + 1;
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

/// The tokens of code (as left by [`code_only`]) with their line numbers.
fn tokens(code: &[char]) -> Vec<(usize, Token)> {
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < code.len() {
        let c = code[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < code.len() && (code[i].is_alphanumeric() || code[i] == '_') {
                i += 1;
            }
            let mut word: String = code[start..i].iter().collect();
            // A raw identifier `r#type` is the identifier `type`.
            if word == "r" && code.get(i) == Some(&'#') {
                let start = i + 1;
                i = start;
                while i < code.len() && (code[i].is_alphanumeric() || code[i] == '_') {
                    i += 1;
                }
                word = code[start..i].iter().collect();
            }
            out.push((line, Token::Ident(word)));
        } else if c == ':' && code.get(i + 1) == Some(&':') {
            out.push((line, Token::PathSep));
            i += 2;
        } else {
            out.push((line, Token::Punct(c)));
            i += 1;
        }
    }
    out
}

/// Every path of a file: `(line, inline modules around it, segments)`. `use` trees give one
/// path per leaf; other paths are the longest `a::b::c` runs not preceded by `::` or `.`.
fn paths(text: &str) -> Vec<(usize, Vec<String>, Vec<String>)> {
    let toks = tokens(&code_only(text));
    let ident = |i: usize| match toks.get(i) {
        Some((_, Token::Ident(w))) => Some(w.as_str()),
        _ => None,
    };
    let is = |i: usize, t: Token| toks.get(i).map(|(_, x)| x) == Some(&t);
    let mut out = Vec::new();
    // Inline modules around the cursor: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        let line = toks[i].0;
        let names = || inline.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>();
        match &toks[i].1 {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            Token::Ident(w) if w == "mod" && is(i + 2, Token::Punct('{')) => {
                if let Some(name) = ident(i + 1) {
                    inline.push((name.to_owned(), depth + 1));
                }
            }
            Token::Ident(w) if w == "use" => {
                let mut leaves = Vec::new();
                i += 1;
                use_tree(&toks, &mut i, Vec::new(), &mut leaves);
                for leaf in leaves {
                    out.push((line, names(), leaf));
                }
                continue;
            }
            Token::Ident(first) => {
                let after_sep = i > 0 && is(i - 1, Token::PathSep);
                let after_dot = i > 0 && is(i - 1, Token::Punct('.'));
                let after_in = i > 1 && ident(i - 1) == Some("in") && is(i - 2, Token::Punct('('));
                if !after_sep && !after_dot && !after_in && is(i + 1, Token::PathSep) {
                    let mut segments = vec![first.clone()];
                    let mut k = i + 1;
                    while is(k, Token::PathSep) {
                        match ident(k + 1) {
                            Some(w) => segments.push(w.to_owned()),
                            None => break,
                        }
                        k += 2;
                    }
                    if segments.len() > 1 {
                        out.push((line, names(), segments));
                    }
                    i = k;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Read one use tree at `*i` (after `use`) into its leaf paths; stops after the tree.
fn use_tree(
    toks: &[(usize, Token)],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    let mut path = prefix;
    if path.is_empty() && toks.get(*i).map(|t| &t.1) == Some(&Token::PathSep) {
        // `use ::name` names an external crate.
        path.push("::".into());
        *i += 1;
    }
    while let Some((_, tok)) = toks.get(*i) {
        match tok {
            Token::Punct('{') => {
                *i += 1;
                while let Some((_, tok)) = toks.get(*i) {
                    match tok {
                        Token::Punct('}') => {
                            *i += 1;
                            break;
                        }
                        Token::Punct(',') => *i += 1,
                        _ => use_tree(toks, i, path.clone(), out),
                    }
                }
                return;
            }
            Token::Punct('*') => {
                *i += 1;
                path.push("*".into());
                out.push(path);
                return;
            }
            Token::Ident(w) => {
                path.push(w.clone());
                *i += 1;
                if toks.get(*i).map(|t| &t.1) == Some(&Token::PathSep) {
                    *i += 1;
                    continue;
                }
                if matches!(toks.get(*i), Some((_, Token::Ident(a))) if a == "as") {
                    *i += 2;
                }
                if path.last().is_some_and(|s| s == "self") {
                    path.pop();
                }
                out.push(path);
                return;
            }
            _ => return,
        }
    }
}

// --- The graphs ------------------------------------------------------------------------------

/// `from -> to -> the first edge found` (file order).
type Graph = BTreeMap<String, BTreeMap<String, Edge>>;

fn add(graph: &mut Graph, from: String, to: String, edge: &Edge) {
    graph.entry(to.clone()).or_default();
    graph
        .entry(from)
        .or_default()
        .entry(to)
        .or_insert_with(|| edge.clone());
}

/// Between top-level modules (`engine`, `relay`, ...; the crate root is `crate`).
fn top_level_graph(edges: &[Edge]) -> Graph {
    let top = |m: &[String]| m.first().cloned().unwrap_or_else(|| "crate".into());
    let mut graph = Graph::new();
    for e in edges {
        graph.entry(top(&e.from)).or_default();
        if top(&e.from) != top(&e.to) {
            add(&mut graph, top(&e.from), top(&e.to), e);
        }
    }
    graph
}

/// Between the files of folder module `folder` (`engine` is `engine/mod.rs`).
fn folder_graph(edges: &[Edge], folder: &str) -> Graph {
    let inside = |m: &[String]| m.first().is_some_and(|f| f == folder);
    let mut graph = Graph::new();
    for e in edges.iter().filter(|e| inside(&e.from) && inside(&e.to)) {
        add(&mut graph, e.source(), e.target(), e);
    }
    graph
}

/// Folder modules: top-level modules with more than one file.
fn folders(edges: &[Edge]) -> BTreeSet<String> {
    edges
        .iter()
        .flat_map(|e| [&e.from, &e.to])
        .filter(|m| m.len() > 1)
        .map(|m| m[0].clone())
        .collect()
}

/// Each strongly connected component with more than one module (its modules, and one cycle
/// through it as text).
fn cycles(graph: &Graph) -> Vec<(Vec<String>, String)> {
    // Tarjan's algorithm, iterating over the sorted graph for a stable output.
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        components: Vec<Vec<&'g str>>,
    }
    fn visit<'g>(st: &mut State<'g>, v: &'g str) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        st.on_stack.insert(v);
        let graph = st.graph;
        for w in graph[v].keys() {
            let w = w.as_str();
            if !st.index.contains_key(w) {
                visit(st, w);
                let low = st.low[v].min(st.low[w]);
                st.low.insert(v, low);
            } else if st.on_stack.contains(w) {
                let low = st.low[v].min(st.index[w]);
                st.low.insert(v, low);
            }
        }
        if st.low[v] == st.index[v] {
            let mut component = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on_stack.remove(w);
                component.push(w);
                if w == v {
                    break;
                }
            }
            st.components.push(component);
        }
    }
    let mut st = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for v in graph.keys() {
        if !st.index.contains_key(v.as_str()) {
            visit(&mut st, v);
        }
    }
    let mut out = Vec::new();
    for component in st.components.iter().filter(|c| c.len() > 1) {
        let inside: BTreeSet<&str> = component.iter().copied().collect();
        // The shortest cycle through the first module, then through the first module no cycle
        // shown so far passes, until every module of the tangle is on one.
        let mut covered = BTreeSet::new();
        let mut texts = Vec::new();
        while let Some(start) = inside.iter().find(|m| !covered.contains(*m)) {
            let path = shortest_path(graph, start, start, &inside).expect("a tangle has cycles");
            covered.extend(path.iter().copied());
            texts.push(path_text(graph, &path));
        }
        let all: Vec<String> = inside.into_iter().map(String::from).collect();
        let mut text = texts.join("\nand: ");
        if texts.len() > 1 {
            text.push_str(&format!("\n  ({} all reach each other)", all.join(", ")));
        }
        out.push((all, text));
    }
    out
}

/// The shortest path `from -> ... -> to` (at least one edge) through `allowed` modules.
fn shortest_path<'g>(
    graph: &'g Graph,
    from: &'g str,
    to: &str,
    allowed: &BTreeSet<&str>,
) -> Option<Vec<&'g str>> {
    let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(v).into_iter().flat_map(|m| m.keys()) {
            let w = w.as_str();
            if w == to {
                let mut path = vec![w, v];
                let mut at = v;
                while at != from {
                    at = previous[at];
                    path.push(at);
                }
                path.reverse();
                return Some(path);
            }
            if allowed.contains(w) && w != from && !previous.contains_key(w) {
                previous.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    None
}

/// `a -> b -> c` and one line per edge with where it comes from.
fn path_text(graph: &Graph, path: &[&str]) -> String {
    let mut text = path.join(" -> ");
    for pair in path.windows(2) {
        let edge = &graph[pair[0]][pair[1]];
        text.push_str(&format!("\n  {} -> {}: {}", pair[0], pair[1], edge.at()));
    }
    text
}

/// One line per edge, for reading the layout (`cargo nextest run layout --no-capture`).
fn graph_text(graph: &Graph) -> String {
    let mut text = String::new();
    for (from, tos) in graph {
        for (to, edge) in tos {
            text.push_str(&format!("  {from} -> {to}   ({})\n", edge.at()));
        }
    }
    text
}

/// Everything wrong with the layout, one paragraph per problem.
fn layout_problems(edges: &[Edge], known: &[(&str, &[&str], &str)]) -> Vec<String> {
    let mut problems = Vec::new();
    let top = top_level_graph(edges);
    for (_, cycle) in cycles(&top) {
        problems.push(format!("a cycle between top-level modules: {cycle}"));
    }
    let mut seen = BTreeSet::new();
    for folder in folders(edges) {
        for (modules, cycle) in cycles(&folder_graph(edges, &folder)) {
            let is_known = |(f, m, _): &(&str, &[&str], &str)| *f == folder && *m == modules;
            if let Some(i) = known.iter().position(is_known) {
                seen.insert(i);
                continue;
            }
            problems.push(format!("a cycle between the files of {folder}/: {cycle}"));
        }
    }
    let stale = known.iter().enumerate().filter(|(i, _)| !seen.contains(i));
    for (_, (folder, modules, _)) in stale {
        problems.push(format!(
            "the known cycle between the files of {folder}/ ({}) is gone or changed: update \
             KNOWN_CYCLES",
            modules.join(", ")
        ));
    }
    let everywhere: BTreeSet<&str> = top.keys().map(String::as_str).collect();
    for (from, to) in FORBIDDEN {
        if !top.contains_key(*from) {
            continue;
        }
        if let Some(path) = shortest_path(&top, from, to, &everywhere) {
            problems.push(format!(
                "`{from}` must not depend on `{to}`: {}",
                path_text(&top, &path)
            ));
        }
    }
    problems
}
