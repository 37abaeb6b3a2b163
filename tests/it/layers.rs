//! One dependency direction (issue 12): every `crate::` path in src/ points at a module of the
//! same layer or a lower one, and no two top-level modules use each other. The layers, lowest
//! first:
//!
//! 0. base: `ids`, `clock`, `fsutil`, `actor`, `inflight`, `progress`
//! 1. `config`, `format` (sealed objects, manifest, key object)
//! 2. `keys`, `journal`, `lock`
//! 3. `auth`, `store`, `catalog`, `audit` (the log and its chain), `retention` (pure policy)
//! 4. `app` (assembly)
//! 5. `ops` (protect, restore, verify, drill, shred, rotate, audit expiry and replication)
//! 6. `status`
//! 7. `daemon`, `cli`, `manual` (the binary's man pages and completions)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LAYERS: &[&[&str]] = &[
    &["ids", "clock", "fsutil", "actor", "inflight", "progress"],
    &["config", "format"],
    &["keys", "journal", "lock"],
    &["auth", "store", "catalog", "audit", "retention"],
    &["app"],
    &["ops"],
    &["status"],
    &["daemon", "cli", "manual"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Top-level module of a file under src/ (`src/ops/shred.rs` -> `ops`).
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

/// `crate::X` references in code (comments and test modules left out).
fn references(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_only_use_their_own_layer_or_lower_ones_and_never_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for f in &files {
        let m = module_of(&src, f);
        if m == "lib" || m == "main" {
            continue;
        }
        let Some(from) = layer(&m) else {
            problems.push(format!("src module `{m}` has no layer: add it to LAYERS"));
            continue;
        };
        for r in references(&std::fs::read_to_string(f).unwrap()) {
            if r == m {
                continue;
            }
            match layer(&r) {
                Some(to) if to > from => problems.push(format!(
                    "{} (layer {from}, `{m}`) uses `crate::{r}` (layer {to}): an upward import",
                    f.strip_prefix(&src).unwrap().display()
                )),
                Some(_) => {
                    uses.entry(m.clone()).or_default().insert(r);
                }
                None => {} // a crate-root item (`crate::Coffre`)
            }
        }
    }
    for (a, bs) in &uses {
        for b in bs {
            if a < b && uses.get(b).is_some_and(|x| x.contains(a)) {
                problems.push(format!("`{a}` and `{b}` use each other"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
