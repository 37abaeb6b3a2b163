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
        "LimitCORE=0",
        "SupplementaryGroups=coffre-operators",
        "RuntimeDirectoryMode=0750",
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
    ] {
        assert!(body.contains(needle), "unit lacks {needle}");
    }
}

/// Issue 11, point 9: no core dumps, the network closed but for loopback (an empty
/// `IPAddressDeny=` allows everything), and the drop-in example that opens it for the stores.
#[test]
fn unit_closes_the_network_and_core_dumps() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let body = std::fs::read_to_string(root.join("systemd/coffre.service")).unwrap();
    let settings: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(settings.contains(&"LimitCORE=0"));
    assert!(
        !settings.contains(&"IPAddressDeny="),
        "empty IPAddressDeny= allows everything"
    );
    assert!(settings.contains(&"IPAddressDeny=any"));
    let dropin =
        std::fs::read_to_string(root.join("systemd/coffre.service.d/stores.conf.example")).unwrap();
    assert!(dropin.contains("[Service]") && dropin.contains("\nIPAddressAllow="));
}

/// Every credential the production example reads from `$CREDENTIALS_DIRECTORY` has its
/// `LoadCredential=` line in the unit (else the file is missing at start).
#[test]
fn production_example_credentials_are_loaded_by_the_unit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/coffre.service")).unwrap();
    let loaded: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LoadCredential="))
        .filter_map(|l| l.split(':').next())
        .collect();
    let example = std::fs::read_to_string(root.join("config/production.example.toml")).unwrap();
    let dir = "/run/credentials/coffre.service/";
    let mut names = Vec::new();
    for line in example.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if let Some((_, rest)) = line.split_once(dir) {
            names.push(rest.trim_end_matches('"').to_string());
        }
        if let Some(rest) = line.strip_prefix("master-key-credential") {
            names.push(
                rest.trim_start_matches([' ', '='])
                    .trim_matches('"')
                    .to_string(),
            );
        }
    }
    assert!(names.len() >= 5, "{names:?}");
    for n in &names {
        assert!(
            loaded.contains(&n.as_str()),
            "credential `{n}` of config/production.example.toml has no LoadCredential={n}:... line in systemd/coffre.service (loaded: {loaded:?})"
        );
    }
}
