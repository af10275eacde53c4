//! The layers of `native/core/src` point one way: the graph of `crate::`
//! paths between modules (one node per source file) has no cycle. A new
//! arrow upwards (transport calling routing's bounce, bounce calling the
//! router) fails here with the cycle it closes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path of each source file: `transport/conn.rs` → `transport::conn`,
/// `store/mod.rs` → `store`, `lib.rs` → `` (the crate root).
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else if name.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}::{name}")
            }
        };
        if path.is_dir() {
            modules(&path, &join(&stem), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = match stem.as_str() {
                "mod" | "lib" => join(""),
                s => join(s),
            };
            out.insert(name, path);
        }
    }
}

/// The modules a file names through `crate::…` (in `use` lists, braces
/// included, and inline paths), each reduced to the longest known module.
fn imports(text: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    // Code only: comments may name modules without depending on them.
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        for path in expand(rest) {
            let mut best = String::new();
            let mut cur = String::new();
            for seg in path.split("::") {
                cur = if cur.is_empty() {
                    seg.to_owned()
                } else {
                    format!("{cur}::{seg}")
                };
                if known.contains_key(&cur) {
                    best = cur.clone();
                }
            }
            if !best.is_empty() {
                out.insert(best);
            }
        }
    }
    out
}

/// `a::b::{c, d::{e}}` → `a::b::c`, `a::b::d::e` (enough of Rust's `use`
/// grammar for module paths; items after the module are ignored later).
fn expand(rest: &str) -> Vec<String> {
    let mut path = String::new();
    for (i, c) in rest.char_indices() {
        match c {
            c if c.is_alphanumeric() || c == '_' || c == ':' => path.push(c),
            '{' => {
                let inner = &rest[i + 1..];
                let mut depth = 1;
                let mut end = inner.len();
                for (j, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = j;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let mut parts = Vec::new();
                let mut depth = 0;
                let mut start = 0;
                let body = &inner[..end];
                for (j, c) in body.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            parts.push(&body[start..j]);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                parts.push(&body[start..]);
                return parts
                    .iter()
                    .flat_map(|p| expand(p.trim()))
                    .map(|p| format!("{path}{p}"))
                    .collect();
            }
            _ => break,
        }
    }
    vec![path.trim_end_matches(':').to_owned()]
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut known = BTreeMap::new();
    modules(&src, "", &mut known);
    known
        .iter()
        .map(|(name, path)| {
            let text = std::fs::read_to_string(path).unwrap();
            let mut deps = imports(&text, &known);
            deps.remove(name);
            (name.clone(), deps)
        })
        .collect()
}

/// A cycle through `node`, if any, as the path that closes it.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, d, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(g, n, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_module_graph_of_the_core_has_no_cycle() {
    let g = graph();
    assert!(
        g["routing"].contains("bounce"),
        "the parser sees `use crate::`"
    );
    assert!(g["transport::conn"].contains("transport::queue"));
    if let Some(c) = cycle(&g) {
        panic!("import cycle: {}", c.join(" -> "));
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle(&g).unwrap(), ["a", "b", "a"]);
    let mut known = BTreeMap::new();
    for k in ["x", "x::y", "z"] {
        known.insert(k.to_owned(), PathBuf::new());
    }
    let got = imports(
        "use crate::x::{y::Item, Other};\nfn f() { crate::z::g() }",
        &known,
    );
    assert_eq!(got, BTreeSet::from(["x::y".into(), "x".into(), "z".into()]));
}
