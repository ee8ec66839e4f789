//! The shape docs/ARCHITECTURE.md promises, checked on the sources: no import circle between the
//! top-level modules of a crate, and no source file that grew past the size of one job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn crates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(directory: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            into.push(path);
        }
    }
}

/// Top-level module → the top-level modules of the same crate it names as `crate::...`,
/// outside its tests.
fn module_graph(source: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(source, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(source).unwrap();
        let top =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !name.is_empty() && name != top {
                graph.entry(top.clone()).or_default().insert(name);
            }
        }
    }
    graph
}

/// A circle through `start`, if any.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_string()]];
    while let Some(path) = stack.pop() {
        for next in graph.get(path.last().unwrap()).into_iter().flatten() {
            if next == start {
                return Some(path.clone());
            }
            if !path.contains(next) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn issue_18_no_crate_has_an_import_circle_between_its_modules() {
    let mut circles = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(crates()).unwrap() {
        let source = entry.unwrap().path().join("src");
        if !source.is_dir() {
            continue;
        }
        let graph = module_graph(&source);
        checked += graph.len();
        for module in graph.keys() {
            if let Some(path) = circle(&graph, module) {
                circles.push(format!("{}: {} -> {module}", source.display(), path.join(" -> ")));
            }
        }
    }
    assert!(checked > 20, "the module graph was read ({checked} modules with imports)");
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
    // The checker finds a circle when there is one.
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into_iter()
    .collect();
    assert_eq!(circle(&graph, "a"), Some(vec!["a".to_string(), "b".to_string(), "c".to_string()]));
}

#[test]
fn issue_18_no_source_file_is_a_hub() {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(crates()).unwrap() {
        let source = entry.unwrap().path().join("src");
        if source.is_dir() {
            rust_files(&source, &mut files);
        }
    }
    assert!(files.len() > 50, "{} source files", files.len());
    let large: Vec<String> = files
        .iter()
        .map(|file| (file, std::fs::read_to_string(file).unwrap().lines().count()))
        .filter(|(_, lines)| *lines > 800)
        .map(|(file, lines)| format!("{} ({lines} lines)", file.display()))
        .collect();
    assert!(large.is_empty(), "files over 800 lines (split them by job): {large:?}");
}
