//! What an ops team plugs in (issue 13): the man pages and completions generated from the CLI,
//! and the Debian package packaging/build-deb.sh builds: every asset at its place with its mode,
//! the config a conffile, the unit installed but not enabled, and no lintian error.
//!
//! `debian_package_holds_every_asset_and_passes_lintian` builds a release binary (several
//! minutes on 2 cores when cold); it needs cargo-deb and lintian (tests/setup.sh installs both).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Subcommand;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `coffre-keys-rotate` for `coffre keys rotate`, and whether it has `--json`: every command of
/// `coffre::cli::Command`, the commands the manual documents.
fn command_pages(cmd: &clap::Command, prefix: &str, pages: &mut Vec<(String, bool)>) {
    for sub in cmd.get_subcommands() {
        let name = format!("{prefix}-{}", sub.get_name());
        let json = sub.get_arguments().any(|a| a.get_id() == "json");
        pages.push((name.clone(), json));
        command_pages(sub, &name, pages);
    }
}

#[test]
fn generated_man_pages_cover_every_command_with_its_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coffre"))
        .args(["generate", "man"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cli = coffre::cli::Command::augment_subcommands(clap::Command::new("coffre"));
    let mut pages = vec![("coffre".to_string(), false)];
    command_pages(&cli, "coffre", &mut pages);
    assert!(pages.len() > 20, "{pages:?}");
    for (page, json) in &pages {
        let path = dir.path().join(format!("{page}.1"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no man page {}: {e}", path.display()));
        assert!(text.contains(".TH "), "{page}: not a man page");
        assert!(
            text.contains(".SH \"EXIT STATUS\""),
            "{page}: no EXIT STATUS"
        );
        for code in ["0", "1", "2", "3", "77"] {
            assert!(
                text.contains(&format!(".TP\n\\fB{code}\\fR\n")),
                "{page}: exit code {code} missing"
            );
        }
        if *json {
            assert!(
                text.contains("\\fB\\-\\-json\\fR\n"),
                "{page}: --json undocumented"
            );
            assert!(text.contains("JSON"), "{page}: --json undocumented");
        }
    }
    // The top page lists the commands; `generate` (packaging only) is nowhere.
    let top = std::fs::read_to_string(dir.path().join("coffre.1")).unwrap();
    assert!(
        top.contains("coffre\\-backup(1)"),
        "coffre.1 does not list its commands"
    );
    let written = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(written, pages.len(), "pages besides the commands'");
    assert!(!dir.path().join("coffre-generate.1").exists());

    let comp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_coffre"))
        .args(["generate", "completions"])
        .arg(comp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["coffre.bash", "_coffre", "coffre.fish"] {
        let text = std::fs::read_to_string(comp.path().join(f)).unwrap();
        assert!(text.contains("retention") && text.contains("json"), "{f}");
        assert!(!text.contains("generate"), "{f} offers the hidden command");
    }

    // Every command's --help names the exit codes.
    for args in [
        &["--help"][..],
        &["backup", "--help"],
        &["keys", "rotate", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_coffre"))
            .args(args)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Exit status:") && help.contains("77"),
            "{args:?}: {help}"
        );
    }
}

/// `dpkg-deb -c`: path (without the leading `.`) -> mode string (`-rwxr-xr-x`).
fn contents(deb: &Path) -> BTreeMap<String, String> {
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let mode = f.next()?.to_string();
            let path = f.nth(4)?.trim_start_matches('.').to_string();
            Some((path, mode))
        })
        .collect()
}

fn info(deb: &Path, part: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("-I")
        .arg(deb)
        .arg(part)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-deb -I {part}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debian_package_holds_every_asset_and_passes_lintian() {
    let t = std::time::Instant::now();
    let out = Command::new(root().join("packaging/build-deb.sh"))
        .current_dir(root())
        .output()
        .expect("packaging/build-deb.sh");
    assert!(
        out.status.success(),
        "build-deb.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(stdout.lines().last().expect("no .deb path printed").trim());
    let deb = root().join(deb);
    eprintln!(
        "built {} in {:.0} s",
        deb.display(),
        t.elapsed().as_secs_f64()
    );

    let files = contents(&deb);
    let expect: &[(&str, &str)] = &[
        ("/usr/bin/coffre", "-rwxr-xr-x"),
        ("/usr/lib/systemd/system/coffre.service", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/coffre.conf", "-rw-r--r--"),
        ("/usr/lib/tmpfiles.d/coffre.conf", "-rw-r--r--"),
        ("/etc/coffre/coffre.toml", "-rw-r-----"),
        (
            "/usr/share/doc/coffre/examples/production.example.toml",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/coffre/examples/stores.conf.example",
            "-rw-r--r--",
        ),
        ("/usr/share/man/man1/coffre.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/coffre-backup.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/coffre-keys-rotate.1.gz", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/coffre",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_coffre", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/coffre.fish",
            "-rw-r--r--",
        ),
        ("/usr/share/doc/coffre/README.md", "-rw-r--r--"),
        ("/usr/share/doc/coffre/FORMAT.md", "-rw-r--r--"),
        ("/usr/share/doc/coffre/security.md", "-rw-r--r--"),
        ("/usr/share/doc/coffre/operations.md", "-rw-r--r--"),
        ("/usr/share/doc/coffre/LICENSE", "-rw-r--r--"),
        ("/usr/share/doc/coffre/copyright", "-rw-r--r--"),
        ("/usr/share/doc/coffre/changelog.Debian.gz", "-rw-r--r--"),
    ];
    for (path, mode) in expect {
        match files.get(*path) {
            None => panic!("{path} is not in the package: {files:#?}"),
            Some(m) => assert_eq!(m, mode, "mode of {path}"),
        }
    }
    // One man page per command, all compressed.
    let man: Vec<&String> = files
        .keys()
        .filter(|p| p.starts_with("/usr/share/man/man1/") && !p.ends_with('/'))
        .collect();
    assert!(man.len() > 20, "{man:?}");
    assert!(man.iter().all(|p| p.ends_with(".1.gz")), "{man:?}");
    // Every file root's.
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        assert!(
            l.contains(" root/root ") || l.contains(" 0/0 "),
            "not root's: {l}"
        );
    }

    // The unit's Documentation= is what the package installs.
    let unit = std::fs::read_to_string(root().join("systemd/coffre.service")).unwrap();
    let docs: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!docs.is_empty());
    for d in docs {
        let path = if let Some(p) = d.strip_prefix("file://") {
            p.to_string()
        } else if let Some(page) = d.strip_prefix("man:") {
            let (name, section) = page.trim_end_matches(')').split_once('(').unwrap();
            format!("/usr/share/man/man{section}/{name}.{section}.gz")
        } else {
            panic!("Documentation={d}: neither file:// nor man:")
        };
        assert!(
            files.contains_key(&path),
            "Documentation={d}: {path} not installed"
        );
    }

    let control = info(&deb, "control");
    for needle in [
        "Package: coffre",
        "Architecture: amd64",
        "Section: admin",
        "systemd",
    ] {
        assert!(
            control.contains(needle),
            "control lacks {needle}:\n{control}"
        );
    }
    let conffiles = info(&deb, "conffiles");
    assert!(
        conffiles
            .lines()
            .any(|l| l.trim() == "/etc/coffre/coffre.toml"),
        "conffiles: {conffiles}"
    );
    // postinst: the user and groups, then the folders and the config's group; the service is
    // registered but neither enabled nor started (keys and stores come first).
    let postinst = info(&deb, "postinst");
    let sysusers = postinst
        .find("systemd-sysusers")
        .expect("postinst: no sysusers");
    let tmpfiles = postinst
        .find("systemd-tmpfiles --create")
        .expect("postinst: no tmpfiles");
    assert!(sysusers < tmpfiles, "tmpfiles needs the coffre group first");
    // Also without a running systemd (an image build): a call outside cargo-deb's
    // `[ -d /run/systemd/system ]` guard, after sysusers.
    let offline = postinst
        .find("systemd-tmpfiles ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} --create coffre.conf")
        .expect("postinst: no systemd-tmpfiles outside the running-systemd guard");
    assert!(sysusers < offline, "tmpfiles needs the coffre group first");
    assert!(postinst.contains("deb-systemd-helper update-state coffre.service"));
    assert!(postinst.contains("was-enabled coffre.service"));
    // Only `try-restart` (a running daemon, on upgrade): never `start` nor `restart`.
    for l in postinst
        .lines()
        .filter(|l| l.contains("deb-systemd-invoke"))
    {
        assert!(
            l.contains("try-restart"),
            "postinst starts the service: {l}"
        );
    }
    for l in postinst.lines().map(str::trim) {
        assert!(
            !l.starts_with("systemctl") || l.contains("daemon-reload"),
            "postinst: {l}"
        );
    }
    let prerm = info(&deb, "prerm");
    assert!(
        prerm.contains("deb-systemd-invoke stop coffre.service"),
        "prerm: remove does not stop the service:\n{prerm}"
    );

    // lintian: no error (warnings printed, and those expected are listed in
    // packaging/lintian-overrides and docs/operations.md).
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("lintian not found: run tests/setup.sh");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(
        errors.is_empty() && out.status.success(),
        "lintian errors:\n{report}"
    );
}
