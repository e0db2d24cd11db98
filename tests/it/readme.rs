//! The documentation against the code and the tree:
//! - `docs/configuration.md`'s tables are generated from the clap definitions; the test fails when
//!   they drift. Regenerate with `UPDATE_DOCS=1 cargo nextest run readme`.
//! - Every relative link of the README and the other markdown documents points at a file or
//!   folder that exists (and, into a markdown file, at a heading it has).

use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// The command that rewrites the generated parts of the docs.
const REGENERATE: &str = "UPDATE_DOCS=1 cargo nextest run readme";

fn table(path: &[&str]) -> String {
    let mut cmd = flowgate::cli::Cli::command();
    cmd.build();
    let mut cur = &cmd;
    for p in path {
        cur = cur
            .find_subcommand(p)
            .unwrap_or_else(|| panic!("subcommand {p}"));
    }
    let mut out = String::from("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for arg in cur.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if default.is_empty() {
            String::from("—")
        } else {
            format!("`{}`", default.join(","))
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string().replace('\n', " "))
            .unwrap_or_default();
        out.push_str(&format!("| `--{long}` | {env} | {default} | {help} |\n"));
    }
    out
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn configuration_doc_matches_the_clap_definitions() {
    let path = root().join("docs/configuration.md");
    let mut doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let mut stale = Vec::new();
    for (name, sub) in [
        ("serve", &["serve"][..]),
        ("engine", &["engine"][..]),
        ("demo", &["demo"][..]),
        ("chat", &["chat"][..]),
        ("token", &["token"][..]),
        ("agents-import", &["agents", "import"][..]),
        ("bench", &["bench"][..]),
    ] {
        let start = format!("<!-- config:{name}:start -->\n");
        let end = format!("<!-- config:{name}:end -->");
        let a = doc
            .find(&start)
            .unwrap_or_else(|| panic!("docs/configuration.md lacks {start}"))
            + start.len();
        let b = doc[a..]
            .find(&end)
            .unwrap_or_else(|| panic!("docs/configuration.md lacks {end}"))
            + a;
        let want = table(sub);
        if doc[a..b] != want {
            stale.push(name);
            doc.replace_range(a..b, &want);
        }
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &doc).unwrap();
        return;
    }
    assert!(
        stale.is_empty(),
        "docs/configuration.md is out of date for {stale:?} (a flag, its environment variable, \
         default or doc comment changed): run `{REGENERATE}` and commit the result"
    );
}

/// The markdown documents whose links are checked: the README, everything in `docs/` (and its
/// folders, e.g. `docs/dialects/`), and the README of every top-level folder that has one.
fn markdown_documents() -> Vec<PathBuf> {
    let mut docs = vec![root().join("README.md")];
    let mut folders = vec![root().join("docs")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                docs.push(path);
            }
        }
    }
    for entry in std::fs::read_dir(root()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            let readme = path.join("README.md");
            if readme.is_file() {
                docs.push(readme);
            }
        }
    }
    docs.sort();
    docs
}

/// Link targets of a markdown text (`[text](target)`, `![alt](target)`, `[label]: target`),
/// outside fenced code blocks and inline code.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code never holds a link: keep only what lies outside backticks.
        let text: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(rest) = text.trim_start().strip_prefix('[')
            && let Some((_, target)) = rest.split_once("]:")
            && let Some(target) = target.split_whitespace().next()
        {
            targets.push(target.trim_matches(['<', '>']).to_owned());
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let inside = rest.split(')').next().unwrap_or_default();
            if let Some(target) = inside.split_whitespace().next() {
                targets.push(target.trim_matches(['<', '>']).to_owned());
            }
        }
    }
    targets
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (a repeated heading gets `-1`, `-2`, …).
fn anchors(markdown: &str) -> Vec<String> {
    let mut bases: Vec<String> = Vec::new();
    let mut found = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = anchor(line.trim_start_matches('#'));
        let repeats = bases.iter().filter(|b| **b == base).count();
        found.push(if repeats == 0 {
            base.clone()
        } else {
            format!("{base}-{repeats}")
        });
        bases.push(base);
    }
    found
}

/// Broken relative links of one document, as `document: target (why)`.
fn broken_links(document: &Path, markdown: &str) -> Vec<String> {
    let shown = document
        .strip_prefix(root())
        .unwrap_or(document)
        .display()
        .to_string();
    let mut broken = Vec::new();
    for target in link_targets(markdown) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file, fragment) = match target.split_once('#') {
            Some((file, fragment)) => (file, Some(fragment)),
            None => (target.as_str(), None),
        };
        let resolved = if file.is_empty() {
            document.to_path_buf()
        } else {
            document.parent().unwrap().join(file.replace("%20", " "))
        };
        if !resolved.exists() {
            broken.push(format!("{shown}: ({target}) — no such file or folder"));
            continue;
        }
        if let Some(fragment) = fragment
            && resolved.extension().is_some_and(|e| e == "md")
        {
            let text = std::fs::read_to_string(&resolved).unwrap();
            if !anchors(&text).iter().any(|a| a == fragment) {
                broken.push(format!("{shown}: ({target}) — no heading with that anchor"));
            }
        }
    }
    broken
}

#[test]
fn relative_links_in_the_docs_point_at_existing_files() {
    let mut broken = Vec::new();
    for document in markdown_documents() {
        let markdown = std::fs::read_to_string(&document).unwrap();
        broken.extend(broken_links(&document, &markdown));
    }
    assert!(
        broken.is_empty(),
        "broken relative links (fix the link or restore the file):\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_link_check_finds_a_broken_link() {
    let document = root().join("README.md");
    let markdown = "See [the guide](docs/no-such-guide.md), [the protocol](docs/protocol.md), \
        [its resume section](docs/protocol.md#7-resume), [a lost anchor](docs/protocol.md#nowhere), \
        `[not a link](nowhere.md)` and [the web](https://example.com/x.md).\n\
        ```text\n[in a code block](nowhere.md)\n```\n";
    let broken = broken_links(&document, markdown);
    assert_eq!(broken.len(), 2, "{broken:#?}");
    assert!(broken[0].contains("docs/no-such-guide.md"), "{broken:#?}");
    assert!(broken[1].contains("#nowhere"), "{broken:#?}");
}
