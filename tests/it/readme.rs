//! The README's configuration tables are generated from the clap definitions; this test fails
//! when they drift. Regenerate with `UPDATE_README=1 cargo nextest run readme`.

use clap::CommandFactory;

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

#[test]
fn readme_config_tables_match_the_clap_definitions() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let mut readme = std::fs::read_to_string(&path).expect("README.md");
    let mut stale = Vec::new();
    for (name, sub) in [
        ("serve", &["serve"][..]),
        ("engine", &["engine"][..]),
        ("demo", &["demo"][..]),
        ("chat", &["chat"][..]),
    ] {
        let start = format!("<!-- config:{name}:start -->\n");
        let end = format!("<!-- config:{name}:end -->");
        let a = readme
            .find(&start)
            .unwrap_or_else(|| panic!("README lacks {start}"))
            + start.len();
        let b = readme[a..]
            .find(&end)
            .unwrap_or_else(|| panic!("README lacks {end}"))
            + a;
        let want = table(sub);
        if readme[a..b] != want {
            stale.push(name);
            readme.replace_range(a..b, &want);
        }
    }
    if std::env::var_os("UPDATE_README").is_some() {
        std::fs::write(&path, &readme).unwrap();
        return;
    }
    assert!(
        stale.is_empty(),
        "README config tables out of date for {stale:?}: run UPDATE_README=1 cargo nextest run readme"
    );
}
