//! Every option and argument of every command has a help text in `coffre CMD --help`
//! (issue 28, item 28: `--source` and the `audit show` filters had none).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_coffre");

fn help(path: &[String]) -> String {
    let out = Command::new(BIN)
        .args(path)
        .arg("--help")
        .env_remove("COFFRE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "coffre {path:?} --help: {}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommands a help text lists under "Commands:" (but `help`).
fn subcommands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty() && l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The options and arguments whose help is empty: in the long help, an entry (`--name`,
/// `-x, --name` or `<NAME>`) followed by a blank line instead of its text.
fn without_help(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .filter(|w| {
            let entry = w[0].trim_start();
            w[0].starts_with("  ")
                // Not a possible value's line (`- preserve: ...`).
                && !entry.starts_with("- ")
                && (entry.starts_with('-') || entry.starts_with('<'))
                && w[1].trim().is_empty()
        })
        .map(|w| w[0].trim().to_string())
        .collect()
}

#[test]
fn every_option_and_argument_of_every_command_has_help() {
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    let mut missing = Vec::new();
    while let Some(path) = todo.pop() {
        let text = help(&path);
        seen += 1;
        for entry in without_help(&text) {
            missing.push(format!("coffre {} {entry}", path.join(" ")));
        }
        for c in subcommands(&text) {
            let mut p = path.clone();
            p.push(c);
            todo.push(p);
        }
    }
    assert!(seen > 25, "only {seen} help texts walked");
    assert!(missing.is_empty(), "without help:\n{}", missing.join("\n"));
}
