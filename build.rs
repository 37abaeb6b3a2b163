//! Build script: records the commit coffre is built from in `COFFRE_BUILD_COMMIT` (for
//! `coffre --version`, `/status` and `coffre_build_info`). `COFFRE_BUILD_COMMIT` in the build's
//! environment wins (packaging from a tarball); else `git rev-parse --short HEAD`; else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=COFFRE_BUILD_COMMIT");
    let given = std::env::var("COFFRE_BUILD_COMMIT")
        .ok()
        .filter(|s| !s.is_empty());
    let commit = given
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "unknown".into());
    // Rebuild when HEAD moves (a worktree's HEAD lives in its own git dir, branches in the common one).
    // (A path that does not exist would rerun this script at every build: only existing ones.)
    let mut watch = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watch.push(format!("{dir}/HEAD"));
    }
    if let Some(dir) = git(&["rev-parse", "--git-common-dir"]) {
        watch.push(format!("{dir}/refs/heads"));
        watch.push(format!("{dir}/packed-refs"));
    }
    for p in watch.iter().filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rustc-env=COFFRE_BUILD_COMMIT={commit}");
}
