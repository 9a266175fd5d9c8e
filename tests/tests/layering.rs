//! The shape of the source tree, checked: inside each crate, imports between files run one way
//! (no file imports one that, directly or through others, imports it back), and no source file
//! grows past 1,000 lines. Circles and giant files are what made every change expensive before
//! the refactor issue; this test keeps them from coming back.
//!
//! An import is a path starting with `crate::`, `super::` or `self::`, or a `use` of a child
//! module, outside comments and outside the trailing `#[cfg(test)] mod tests` of a file (whose
//! `super` is the file itself). A path names the longest module prefix that is a file; a glob
//! or a list after `super::` names the parent module's file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 1_000;

/// One crate (or binary) root: its files by module path.
struct Tree {
    /// Module path (`["store", "keys"]`) to the file's path relative to the root.
    modules: BTreeMap<Vec<String>, String>,
    /// File path relative to the root to its source.
    sources: BTreeMap<String, String>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, skip: &[&Path], out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if skip.contains(&path.as_path()) {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, skip, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

fn module_path(relative: &str) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn load(root: &Path, skip: &[&Path]) -> Tree {
    let mut files = Vec::new();
    rust_files(root, skip, &mut files);
    let mut tree = Tree {
        modules: BTreeMap::new(),
        sources: BTreeMap::new(),
    };
    for file in files {
        let relative = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        tree.modules
            .insert(module_path(&relative), relative.clone());
        tree.sources
            .insert(relative, std::fs::read_to_string(&file).unwrap());
    }
    tree
}

/// The code a file imports from: comments and the trailing test module removed.
fn code_of(source: &str) -> String {
    let body = match source.find("\n#[cfg(test)]\nmod tests {") {
        Some(at) => &source[..at],
        None => source,
    };
    body.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers of a path after `at` (`a::b::C` gives a, b, C), and whether it goes on
/// with a glob or a list (`::*`, `::{`).
fn segments(code: &str, mut at: usize) -> (Vec<String>, bool) {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    loop {
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        if at == start {
            let group = at < bytes.len() && (bytes[at] == b'*' || bytes[at] == b'{');
            return (out, group);
        }
        out.push(code[start..at].to_string());
        if code[at..].starts_with("::") {
            at += 2;
        } else {
            return (out, false);
        }
    }
}

fn is_word_start(code: &str, at: usize) -> bool {
    at == 0 || {
        let c = code.as_bytes()[at - 1];
        !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
    }
}

fn resolve(tree: &Tree, parts: &[String]) -> Option<String> {
    (1..=parts.len())
        .rev()
        .find_map(|k| tree.modules.get(&parts[..k]).cloned())
}

/// Which files each file imports from.
fn imports(tree: &Tree) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (file, source) in &tree.sources {
        let me = module_path(file);
        let code = code_of(source);
        let mut targets = BTreeSet::new();
        for anchor in ["crate::", "super::", "self::"] {
            for (at, _) in code.match_indices(anchor) {
                if !is_word_start(&code, at) {
                    continue;
                }
                let (mut path, group) = segments(&code, at + anchor.len());
                let mut base: Vec<String> = match anchor {
                    "crate::" => Vec::new(),
                    "super::" => me[..me.len().saturating_sub(1)].to_vec(),
                    _ => me.clone(),
                };
                while path.first().map(String::as_str) == Some("super") {
                    path.remove(0);
                    base.pop();
                }
                let target = if path.is_empty() && group {
                    tree.modules.get(&base).cloned()
                } else {
                    base.extend(path);
                    resolve(tree, &base)
                };
                targets.extend(target);
            }
        }
        for (at, _) in code.match_indices("use ") {
            if !is_word_start(&code, at) {
                continue;
            }
            let (path, _) = segments(&code, at + 4);
            let Some(first) = path.first() else { continue };
            let mut child = me.clone();
            child.push(first.clone());
            if tree.modules.contains_key(&child) {
                child.extend(path[1..].iter().cloned());
                targets.extend(resolve(tree, &child));
            }
        }
        targets.remove(file);
        edges.insert(file.clone(), targets);
    }
    edges
}

/// Groups of files that import each other (through any number of steps).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(file) = stack.pop() {
            for next in edges.get(&file).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|file| (file, reach(file))).collect();
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for (file, from_file) in &reached {
        if !from_file.contains(*file) || groups.iter().any(|g| g.contains(*file)) {
            continue;
        }
        let group = from_file
            .iter()
            .filter(|other| reached[other].contains(*file))
            .cloned()
            .collect();
        groups.push(group);
    }
    groups
}

/// The roots checked: each crate's library, and each binary that is a folder.
fn roots() -> Vec<(PathBuf, Vec<PathBuf>)> {
    let ws = workspace();
    let services_bin = ws.join("services/src/bin");
    let mut out = vec![
        (ws.join("state/src"), vec![]),
        (ws.join("actors/src"), vec![]),
        (ws.join("services/src"), vec![services_bin.clone()]),
    ];
    for entry in std::fs::read_dir(&services_bin).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push((path, vec![]));
        }
    }
    out
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let mut found = Vec::new();
    for (root, skip) in roots() {
        let skip: Vec<&Path> = skip.iter().map(PathBuf::as_path).collect();
        let tree = load(&root, &skip);
        assert!(tree.sources.len() > 3, "{} has its sources", root.display());
        for group in circles(&imports(&tree)) {
            found.push(format!("{}: {:?}", root.display(), group));
        }
    }
    assert!(
        found.is_empty(),
        "files that import each other:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    // The checker itself: a folder whose mod.rs re-exports a child that imports `super::*`,
    // and two files that reach each other through a third.
    let tree = |files: &[(&str, &str)]| Tree {
        modules: files
            .iter()
            .map(|(f, _)| (module_path(f), f.to_string()))
            .collect(),
        sources: files
            .iter()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .collect(),
    };
    let folder = tree(&[
        ("lib.rs", "pub mod store;\n"),
        ("store/mod.rs", "mod keys;\npub use keys::key;\n"),
        ("store/keys.rs", "use super::*;\npub fn key() {}\n"),
    ]);
    let found = circles(&imports(&folder));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("store/keys.rs") && found[0].contains("store/mod.rs"));

    let through_a_third = tree(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "use crate::b::B;\n"),
        ("b.rs", "pub struct B(crate::c::C);\n"),
        (
            "c.rs",
            "// crate::x in a comment is not an import\npub struct C(Box<crate::a::A>);\n",
        ),
    ]);
    assert_eq!(circles(&imports(&through_a_third)).len(), 1);

    let one_way = tree(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        (
            "a.rs",
            "use crate::b::B;\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
        ("b.rs", "pub struct B;\n// use crate::a::A;\n"),
    ]);
    assert!(circles(&imports(&one_way)).is_empty());
}

#[test]
fn no_source_file_is_over_a_thousand_lines() {
    let mut long = Vec::new();
    for (root, skip) in roots() {
        let skip: Vec<&Path> = skip.iter().map(PathBuf::as_path).collect();
        for (file, source) in load(&root, &skip).sources {
            let lines = source.lines().count();
            if lines > MAX_LINES {
                long.push(format!("{}/{file}: {lines} lines", root.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}
