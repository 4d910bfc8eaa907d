//! The driver's modules import downward only: each top-level module of `src/` may name
//! (`crate::<module>`) only modules of a lower layer, so there is no circle between them.
//! Reads the sources; no VM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every top-level module and its layer (lower layers know nothing of higher ones).
const LAYERS: &[(&str, u8)] = &[
    ("timeouts", 0),
    ("template", 0),
    ("stale", 0),
    ("orphans", 0),
    ("log", 0),
    ("error", 1),
    ("vlan", 2),
    ("node", 2),
    ("polling", 2),
    ("settle", 3),
    ("ctx", 4),
    ("backend", 5),
    ("warm", 6),
    ("machine", 7),
    ("run", 8),
    ("test", 9),
    ("backdoor_bench", 10),
    ("warm_bench", 10),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`machine/session.rs` -> `machine`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The modules named as `crate::<name>` in code (comments and doc comments are skipped).
fn references(text: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            refs.push((n + 1, name));
            rest = after;
        }
    }
    refs
}

#[test]
fn modules_import_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let Some(&own) = layers.get(module.as_str()) else {
            problems.push(format!(
                "{}: module `{module}` has no layer in tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, dep) in references(&text) {
            if dep == module {
                continue;
            }
            match layers.get(dep.as_str()) {
                Some(&l) if l < own => {}
                // Items of lib.rs (re-exports, macros) are not modules.
                None if !src.join(format!("{dep}.rs")).exists() && !src.join(&dep).is_dir() => {}
                _ => problems.push(format!(
                    "{}:{line}: `{module}` (layer {own}) names `crate::{dep}` (layer {:?})",
                    file.display(),
                    layers.get(dep.as_str())
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import() {
    let refs = references(
        "use crate::machine::Machine;\n/// [`crate::run`]\nlet x = crate::warm::plan();",
    );
    assert_eq!(
        refs,
        vec![(1, "machine".to_string()), (3, "warm".to_string())]
    );
}
