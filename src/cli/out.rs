//! Where a command's output goes: printed in a local run, sent as frames to a control-socket
//! caller; one helper for text tables (and `Out::json` for `--json`).

use anyhow::Result;
use serde::Serialize;

/// `outln!(out, "...", args)`: one line to the command's stdout.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => { $out.out(format!($($arg)*)) };
}
/// `errln!(out, "...", args)`: one line to the command's stderr.
macro_rules! errln {
    ($out:expr, $($arg:tt)*) => { $out.err(format!($($arg)*)) };
}
pub(crate) use {errln, outln};

/// One frame of a command's output.
#[derive(Debug)]
pub enum Frame {
    Stdout(String),
    Stderr(String),
}

/// Where a command's text output goes.
pub struct Out {
    remote: Option<tokio::sync::mpsc::UnboundedSender<Frame>>,
}

impl Out {
    /// Print to this process's stdout and stderr.
    pub fn local() -> Out {
        Out { remote: None }
    }

    /// Send to a control-socket caller.
    pub fn remote(tx: tokio::sync::mpsc::UnboundedSender<Frame>) -> Out {
        Out { remote: Some(tx) }
    }

    pub(crate) fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub fn out(&self, mut s: String) {
        s.push('\n');
        match &self.remote {
            // A caller that went away does not stop the command.
            Some(tx) => {
                let _ = tx.send(Frame::Stdout(s));
            }
            None => print!("{s}"),
        }
    }

    pub fn err(&self, mut s: String) {
        s.push('\n');
        match &self.remote {
            Some(tx) => {
                let _ = tx.send(Frame::Stderr(s));
            }
            None => eprint!("{s}"),
        }
    }

    pub fn json<T: Serialize>(&self, v: &T) -> Result<()> {
        self.out(serde_json::to_string_pretty(v)?);
        Ok(())
    }

    /// Print rows under a header, each column as wide as its widest cell (two spaces apart);
    /// the columns named in `right` are right-aligned (numbers). The last column is not padded.
    pub fn table(&self, head: &[&str], rows: &[Vec<String>], right: &[usize]) {
        for line in table_lines(head, rows, right) {
            self.out(line);
        }
    }
}

pub(super) fn table_lines(head: &[&str], rows: &[Vec<String>], right: &[usize]) -> Vec<String> {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(width.len()) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = width[i].saturating_sub(c.chars().count());
            if right.contains(&i) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i != last {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s
    };
    let mut out = vec![line(head.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).take(width.len()).collect())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::table_lines;

    #[test]
    fn table_columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["a".to_string(), "12".into(), "x".into()],
            vec!["longer".to_string(), "3".into(), "yy".into()],
        ];
        let lines = table_lines(&["id", "size", "state"], &rows, &[1]);
        assert_eq!(
            lines,
            vec![
                "id      size  state".to_string(),
                "a         12  x".into(),
                "longer     3  yy".into(),
            ]
        );
    }
}
