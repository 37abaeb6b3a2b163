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
    let c = coffre::Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/coffre.toml"))
        .unwrap();
    assert_eq!(c.sources[0].name, "emr");
    assert_eq!(c.sources[0].path, Path::new("./var/incoming"));
    let names: Vec<_> = c.stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["site-a", "site-b"]);
    assert_eq!(c.sites().len(), 2);
    assert_eq!(
        c.key_providers[0].master_key.as_deref(),
        Some(Path::new("./var/keys/master.key"))
    );
    assert!(c.key_providers[0].create_master_key);
    assert_eq!(c.state_dir, Path::new("./var/state"));
    assert_eq!(c.status.listen.to_string(), "127.0.0.1:9640");
}
