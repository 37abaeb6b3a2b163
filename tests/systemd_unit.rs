//! The shipped unit is hardened: `systemd-analyze security --offline=true` rates its exposure at
//! 2.0 or less, and it speaks the notify protocol the daemon implements.

use std::path::Path;
use std::process::Command;

#[test]
fn unit_exposure_is_at_most_two() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/coffre.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze not found: run tests/setup.sh (package systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in: {text}"));
    let value: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse: {line}"));
    assert!(value <= 2.0, "exposure {value} > 2.0:\n{text}");
    let body = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "LoadCredential=",
        "StateDirectory=coffre",
        "RuntimeDirectory=coffre",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
    ] {
        assert!(body.contains(needle), "unit lacks {needle}");
    }
}
