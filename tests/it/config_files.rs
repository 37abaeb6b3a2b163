//! Every file in config/ parses and validates (the production example with its pkcs11 provider
//! is validated for everything but the presence of its secret files, which live on the target
//! host).

use std::path::Path;

#[test]
fn every_config_file_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let c = coffre::Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(c.stores.len() >= 2, "{}", path.display());
        assert!(
            c.sites().len() >= c.replication.min_sites,
            "{}",
            path.display()
        );
        assert!(!c.key_providers.is_empty());
        n += 1;
    }
    assert!(
        n >= 2,
        "expected coffre.toml and production.example.toml, found {n}"
    );
}

#[test]
fn embedded_default_is_what_the_readme_promises() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = coffre::Config::load(&root.join("config/coffre.toml")).unwrap();
    assert_eq!(c.sources[0].name, "emr");
    assert_eq!(c.sources[0].path, root.join("var/incoming"));
    let names: Vec<_> = c.stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["site-a", "site-b"]);
    assert_eq!(c.sites().len(), 2);
    assert_eq!(
        c.key_providers[0].master_key.as_deref(),
        Some(root.join("var/keys/master.key").as_path())
    );
    assert!(c.key_providers[0].create_master_key);
    assert_eq!(c.state_dir, root.join("var/state"));
    assert_eq!(c.status.listen.to_string(), "127.0.0.1:9640");
}

/// The README's first steps say how long the embedded default waits before taking a snapshot
/// (issue 13, 3.11): that must be what the config and the defaults do.
#[test]
fn readme_states_the_default_completeness_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let c = coffre::Config::load(&root.join("config/coffre.toml")).unwrap();
    assert_eq!(c.sources[0].complete, coffre::config::CompleteRule::Settled);
    assert_eq!(c.sources[0].settle_time, std::time::Duration::from_secs(5));
    assert!(readme.contains("`complete =\n\"settled\"` with `settle-time = \"5s\"`"));
    assert!(readme.contains("a rename does not\nmake it sooner"));
    assert!(!readme.contains("then\nrename it, or let it settle"));
    // The default of settle-time when a source does not set it.
    let text = std::fs::read_to_string(root.join("config/coffre.toml"))
        .unwrap()
        .replace("settle-time = \"5s\"\n", "")
        .replace("complete = \"settled\"\n", "");
    let d = coffre::Config::from_toml(&text, Path::new("c.toml")).unwrap();
    assert_eq!(d.sources[0].complete, coffre::config::CompleteRule::Settled);
    assert_eq!(d.sources[0].settle_time, std::time::Duration::from_secs(30));
    assert!(readme.contains(
        "`settled` (the default: size and mtime unchanged for `settle-time`,\n  default 30 s"
    ));
}

/// Every document the README and the sources cite is in the repository (issue 13, 3.12).
#[test]
fn cited_documents_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts = vec![std::fs::read_to_string(root.join("README.md")).unwrap()];
    for f in [
        "src/store.rs",
        "docs/FORMAT.md",
        "docs/security.md",
        "docs/operations.md",
    ] {
        texts.push(std::fs::read_to_string(root.join(f)).unwrap());
    }
    for t in &texts {
        assert!(
            !t.contains("DESIGN"),
            "a design document that is not in the repository is cited"
        );
        for (i, _) in t.match_indices("docs/") {
            let name: String = t[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                .collect();
            let name = name.trim_end_matches('.');
            if name.ends_with(".md") {
                assert!(root.join(name).is_file(), "{name} is cited but missing");
            }
        }
    }
}

/// Issue 28 item 20: the production example shows drills (a dump's and a point-in-time one) and
/// the shred schedule.
#[test]
fn the_production_example_shows_drills_and_shredding() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\n[shred]\n"), "no [shred] table");
    let c = coffre::Config::load(&path).unwrap();
    let drilled: Vec<_> = c
        .sources
        .iter()
        .filter(|s| s.drill.every.is_some())
        .collect();
    assert!(drilled
        .iter()
        .any(|s| s.drill.verify_command.is_some() && !s.drill.pitr));
    assert!(drilled
        .iter()
        .any(|s| s.drill.pitr && s.drill.pg_user.is_some()));
    // The relative verify command is taken from the config's folder.
    assert!(drilled.iter().any(|s| s
        .drill
        .verify_command
        .as_deref()
        .is_some_and(|v| v.starts_with(&format!("'{}/", path.parent().unwrap().display())))));
}
