//! One dependency direction (issue 12): every `crate::` path in src/ points at a module of the
//! same layer or a lower one, and no two top-level modules use each other; and, file by file
//! (issue 29), no file imports itself through others (test modules and `super::` paths
//! included). The layers, lowest first:
//!
//! 0. base: `ids`, `clock`, `fsutil`, `actor`, `inflight`, `progress`
//! 1. `config`, `format` (sealed objects, manifest, key object)
//! 2. `keys`, `journal`, `lock`
//! 3. `auth`, `store`, `catalog`, `audit` (the log and its chain), `retention` (the policy)
//! 4. `app` (assembly)
//! 5. `ops`, in rooms: verify, audit_replicate, pitr, lifecycle (retention, shred, destruction,
//!    re-wrap, rotation, WAL and access-log expiry), snapshot (protect, commit, restore), wal,
//!    drill
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

/// Top-level module of a file under src/ (`src/ops/lifecycle/shred.rs` -> `ops`).
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

// ---------------------------------------------------------------------------------------------
// File level: the graph of file -> file imports over all of src, test modules and `super::`
// paths included, must have no cycle.

/// Module path of a file under src/ (`src/ops/wal/mod.rs` -> `["ops", "wal"]`, `src/lib.rs` -> `[]`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// The code of a file with comments, strings and char literals blanked out (lifetimes kept).
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r'
            && (at(i + 1) == '"' || (at(i + 1) == '#' && (at(i + 2) == '"' || at(i + 2) == '#')))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            let mut hashes = 0;
            i += 1;
            while c[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1; // the opening quote
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && at(i + 1) == '\\' {
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c[i] == '\'' && at(i + 2) == '\'' {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Path, // `::`
    Open,
    Close,
    Semi,
    Comma,
    Other,
}

fn tokens(code: &str) -> Vec<Tok> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
            continue;
        }
        match c[i] {
            ':' if c.get(i + 1) == Some(&':') => {
                out.push(Tok::Path);
                i += 1;
            }
            '{' => out.push(Tok::Open),
            '}' => out.push(Tok::Close),
            ';' => out.push(Tok::Semi),
            ',' => out.push(Tok::Comma),
            ch if ch.is_whitespace() => {}
            '$' => {
                // `$crate::` in a macro: not a path of this file's.
                out.push(Tok::Other);
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                continue;
            }
            _ => out.push(Tok::Other),
        }
        i += 1;
    }
    out
}

/// Expands a use tree starting at `t[i]` (after `use`) into full paths, up to the closing `;`.
fn use_paths(t: &[Tok], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    while *i < t.len() {
        match &t[*i] {
            Tok::Ident(s) if s == "as" => {
                *i += 2; // `as name`
                continue;
            }
            Tok::Ident(s) => path.push(s.clone()),
            Tok::Path => {}
            Tok::Open => {
                *i += 1;
                loop {
                    use_paths(t, i, &path, out);
                    match t.get(*i) {
                        Some(Tok::Comma) => *i += 1,
                        _ => break,
                    }
                    if t.get(*i) == Some(&Tok::Close) {
                        break;
                    }
                }
                *i += 1; // the `}`
                return;
            }
            Tok::Other => {} // `*`
            Tok::Close | Tok::Semi | Tok::Comma => break,
        }
        *i += 1;
    }
    if path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    if path.len() > prefix.len() || !path.is_empty() {
        out.push(path);
    }
}

struct Tree {
    /// Module path -> the file that defines it (inline modules map to their file).
    files: BTreeMap<Vec<String>, std::path::PathBuf>,
}

impl Tree {
    /// The file a path names: the file of its longest prefix that is a module.
    fn resolve(&self, path: &[String]) -> Option<&std::path::PathBuf> {
        (0..=path.len())
            .rev()
            .find_map(|k| self.files.get(&path[..k]))
    }
}

/// Absolute module path of `path` as written in module `here`, when it starts at `crate`,
/// `super`, `self`, or a child module of `here` (a 2018 relative path); None for other crates'
/// paths and names in scope.
fn absolute(tree: &Tree, here: &[String], path: &[String]) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut base: Vec<String>;
    let mut rest = path;
    match first.as_str() {
        "crate" => {
            base = Vec::new();
            rest = &path[1..];
        }
        "self" | "super" => {
            base = here.to_vec();
            while let Some(s) = rest.first() {
                match s.as_str() {
                    "self" => {}
                    "super" => {
                        base.pop()?;
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        _ => {
            base = here.to_vec();
            base.push(first.clone());
            if !tree.files.contains_key(&base) {
                return None;
            }
            base.pop();
        }
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Every path a file's code names, with the module it is written in: `use` trees expanded,
/// and `a::b::c` paths in expressions and types.
fn paths_of(file_module: &[String], code: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let t = tokens(code);
    let mut out = Vec::new();
    // Inline modules: (brace depth at which they close, name).
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut depth = 0usize;
    let here = |stack: &Vec<(usize, String)>| {
        let mut m = file_module.to_vec();
        m.extend(stack.iter().map(|(_, n)| n.clone()));
        m
    };
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.saturating_sub(1);
                if stack.last().is_some_and(|(d, _)| *d == depth) {
                    stack.pop();
                }
            }
            Tok::Ident(k) if k == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Open)) = (t.get(i + 1), t.get(i + 2)) {
                    stack.push((depth, name.clone()));
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(k) if k == "use" && (i == 0 || t[i - 1] != Tok::Path) => {
                i += 1;
                let mut paths = Vec::new();
                use_paths(&t, &mut i, &[], &mut paths);
                let m = here(&stack);
                out.extend(paths.into_iter().map(|p| (m.clone(), p)));
                continue;
            }
            Tok::Ident(first) if i == 0 || t[i - 1] != Tok::Path => {
                let mut p = vec![first.clone()];
                let mut j = i + 1;
                while t.get(j) == Some(&Tok::Path) {
                    match t.get(j + 1) {
                        Some(Tok::Ident(s)) => p.push(s.clone()),
                        _ => break,
                    }
                    j += 2;
                }
                if p.len() > 1 {
                    out.push((here(&stack), p));
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// file -> the files it imports (itself left out), over every file of src/ but main.rs.
fn file_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| f != &src.join("main.rs"));
    let name = |f: &Path| f.strip_prefix(src).unwrap().display().to_string();
    let tree = Tree {
        files: files
            .iter()
            .map(|f| (module_path(src, f), f.clone()))
            .collect(),
    };
    let mut graph = BTreeMap::new();
    for f in &files {
        let code = strip(&std::fs::read_to_string(f).unwrap());
        let mut to = BTreeSet::new();
        for (here, p) in paths_of(&module_path(src, f), &code) {
            let Some(abs) = absolute(&tree, &here, &p) else {
                continue;
            };
            if let Some(g) = tree.resolve(&abs) {
                if g != f {
                    to.insert(name(g));
                }
            }
        }
        graph.insert(name(f), to);
    }
    graph
}

/// The strongly connected components of more than one file, each as a cycle through all of
/// its files where one exists, else as the set (Tarjan's algorithm, then a walk).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct S<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut S<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = S {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// One cycle through the first file of `comp`, as the file chain `a -> b -> a`.
fn chain(graph: &BTreeMap<String, BTreeSet<String>>, comp: &[String]) -> String {
    let from = &comp[0];
    let mut prev: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    while let Some(v) = queue.pop_front() {
        for w in graph[v].iter().filter(|w| comp.contains(w)) {
            if w == from {
                let mut back = vec![from];
                let mut at = v;
                while at != from {
                    back.push(at);
                    at = prev[at];
                }
                back.push(from);
                back.reverse();
                let names: Vec<&str> = back.iter().map(|s| s.as_str()).collect();
                return names.join(" -> ");
            }
            if !prev.contains_key(w) {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    comp.join(", ")
}

#[test]
fn no_file_imports_itself_through_others() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = file_graph(&src);
    let found = cycles(&graph);
    let text: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            format!(
                "{} files: {}\n  e.g. {}\n  imports inside: {}",
                c.len(),
                c.join(", "),
                chain(&graph, c),
                edges.join("; ")
            )
        })
        .collect();
    assert!(
        found.is_empty(),
        "{} file-level import cycles:\n{}",
        found.len(),
        text.join("\n")
    );
}
