//! The one config builder of the tests: state folder, tables (`[daemon]`, `[shred]`, `[audit]`,
//! ...), sources (with their retention or PITR tables), stores (local folders, s3s-fs,
//! Azurite) and key providers (file, SoftHSM2), as TOML text, a file, or a parsed
//! [`coffre::config::Config`] for the tests that call the library.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use super::coffre::{azure_store, file_key_provider, local_store, local_stores, s3_store};
use super::servers::{Azurite, S3Server, SoftHsm};

/// A coffre config, table by table.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    root: PathBuf,
    state: PathBuf,
    tables: String,
    sources: String,
    stores: String,
    providers: String,
    extra: String,
}

impl ConfigBuilder {
    /// A config under `root`: state in `root/state`, nothing else yet.
    pub fn new(root: &Path) -> ConfigBuilder {
        ConfigBuilder {
            root: root.to_path_buf(),
            state: root.join("state"),
            tables: String::new(),
            sources: String::new(),
            stores: String::new(),
            providers: String::new(),
            extra: String::new(),
        }
    }

    /// The state folder (default `root/state`).
    pub fn state(mut self, state: &Path) -> ConfigBuilder {
        self.state = state.to_path_buf();
        self
    }

    /// A table `[name]` with `body` (lines of `key = value`).
    pub fn table(mut self, name: &str, body: &str) -> ConfigBuilder {
        self.tables
            .push_str(&format!("[{name}]\n{}\n", body.trim_end()));
        self
    }

    /// Tables written out by the caller (`[audit]\n...\n[shred]\n...`), before the sources.
    pub fn tables_text(mut self, text: &str) -> ConfigBuilder {
        self.tables.push_str(text);
        if !self.tables.is_empty() && !self.tables.ends_with('\n') {
            self.tables.push('\n');
        }
        self
    }

    /// The quick daemon of the end-to-end tests: `[daemon]` (scan every 200 ms, catch up every
    /// second, scrub hourly, drain 5 s) and `[replication]` (two sites, one retry after 50 ms).
    pub fn quick_daemon(self) -> ConfigBuilder {
        self.table(
            "daemon",
            "scan-interval = \"200ms\"\ncatch-up-interval = \"1s\"\nscrub-every = \"1h\"\ndrain-timeout = \"5s\"",
        )
        .table("replication", "min-sites = 2\nretries = 1\nbackoff = \"50ms\"")
    }

    /// `[status]` listening on 127.0.0.1:`port` (0: a port of its own).
    pub fn status(self, port: u16) -> ConfigBuilder {
        self.table("status", &format!("listen = \"127.0.0.1:{port}\""))
    }

    /// `[shred] max-clock-jump = "100d"`: for the tests that move the clock ahead by days at
    /// once (the clock guard itself is tested in retention_clock.rs).
    pub fn clock_jumps_allowed(self) -> ConfigBuilder {
        self.table("shred", "max-clock-jump = \"100d\"")
    }

    /// `[audit]` with `body`.
    pub fn audit(self, body: &str) -> ConfigBuilder {
        self.table("audit", body)
    }

    /// A `[[source]]` `name` reading `path`; `extra` goes in its table verbatim (more keys,
    /// then its sub-tables such as `[source.retention]`).
    pub fn source(mut self, name: &str, path: &Path, extra: &str) -> ConfigBuilder {
        self.sources.push_str(&format!(
            "[[source]]\nname = \"{name}\"\npath = \"{}\"\n{extra}",
            path.display()
        ));
        if !self.sources.ends_with('\n') {
            self.sources.push('\n');
        }
        self
    }

    /// Source `emr` reading `root/in`.
    pub fn emr(self) -> ConfigBuilder {
        let path = self.root.join("in");
        self.source("emr", &path, "")
    }

    /// `[source.pitr]` of the last source: `window`, then `extra` lines.
    pub fn pitr(mut self, window: &str, extra: &str) -> ConfigBuilder {
        self.sources
            .push_str(&format!("[source.pitr]\nwindow = \"{window}\"\n{extra}"));
        if !self.sources.ends_with('\n') {
            self.sources.push('\n');
        }
        self
    }

    /// `[source.retention]` of the last source with `body`.
    pub fn retention(mut self, body: &str) -> ConfigBuilder {
        self.sources
            .push_str(&format!("[source.retention]\n{}\n", body.trim_end()));
        self
    }

    /// Local stores for `(name, site)` pairs, each at `root/stores/<site>`.
    pub fn local_stores(mut self, stores: &[(&str, &str)]) -> ConfigBuilder {
        self.stores.push_str(&local_stores(&self.root, stores));
        self
    }

    /// One local store at `path`.
    pub fn local_store(mut self, name: &str, site: &str, path: &Path) -> ConfigBuilder {
        self.stores.push_str(&local_store(name, site, path));
        self
    }

    /// An S3 store on s3s-fs (credentials from the env names of [`super::coffre`]).
    pub fn s3_store(mut self, name: &str, site: &str, s3: &S3Server) -> ConfigBuilder {
        self.stores.push_str(&s3_store(name, site, s3));
        self
    }

    /// An S3 store on s3s-fs, no region named, its credentials in the variables `ak_env` and
    /// `sk_env`.
    pub fn s3_store_keys_in(
        mut self,
        name: &str,
        site: &str,
        s3: &S3Server,
        (ak_env, sk_env): (&str, &str),
    ) -> ConfigBuilder {
        self.stores.push_str(&format!(
            "[[store]]\nname = \"{name}\"\nkind = \"s3\"\nsite = \"{site}\"\njurisdiction = \"CA-QC\"\nbucket = \"{}\"\nendpoint = \"{}\"\naccess-key-id-env = \"{ak_env}\"\nsecret-access-key-env = \"{sk_env}\"\n",
            s3.bucket(),
            s3.endpoint(),
        ));
        self
    }

    /// An Azure Blob store on Azurite.
    pub fn azure_store(mut self, name: &str, site: &str, az: &Azurite) -> ConfigBuilder {
        self.stores.push_str(&azure_store(name, site, az));
        self
    }

    /// `[[store]]` tables written out by the caller.
    pub fn stores_text(mut self, text: &str) -> ConfigBuilder {
        self.stores.push_str(text);
        self
    }

    /// The file key provider `local`, its master key at `root/keys/master.key` (created on
    /// first use).
    pub fn file_keys(self) -> ConfigBuilder {
        let key = self.root.join("keys/master.key");
        self.file_keys_at(&key)
    }

    /// The file key provider `local`, its master key at `master_key`.
    pub fn file_keys_at(mut self, master_key: &Path) -> ConfigBuilder {
        self.providers.push_str(&file_key_provider(master_key));
        self
    }

    /// A PKCS#11 key provider `name` on the SoftHSM2 token `hsm`.
    pub fn softhsm_keys(self, name: &str, hsm: &SoftHsm) -> ConfigBuilder {
        self.pkcs11_keys(name, hsm.module_path(), hsm.label(), hsm.pin_file())
    }

    /// A PKCS#11 key provider `name`: `module`, the token `label`, its PIN in `pin_file`.
    pub fn pkcs11_keys(
        mut self,
        name: &str,
        module: &Path,
        label: &str,
        pin_file: &Path,
    ) -> ConfigBuilder {
        self.providers.push_str(&format!(
            "[[key-provider]]\nname = \"{name}\"\nkind = \"pkcs11\"\nmodule = \"{}\"\ntoken-label = \"{label}\"\npin-file = \"{}\"\n",
            module.display(),
            pin_file.display(),
        ));
        self
    }

    /// `[[key-provider]]` tables written out by the caller.
    pub fn providers_text(mut self, text: &str) -> ConfigBuilder {
        self.providers.push_str(text);
        self
    }

    /// Text appended verbatim at the end (array tables of other kinds).
    pub fn raw(mut self, text: &str) -> ConfigBuilder {
        self.extra.push_str(text);
        self
    }

    pub fn text(&self) -> String {
        format!(
            "state-dir = \"{state}\"\n{tables}{sources}{stores}{providers}{extra}",
            state = self.state.display(),
            tables = self.tables,
            sources = self.sources,
            stores = self.stores,
            providers = self.providers,
            extra = self.extra,
        )
    }

    /// Write it to `path`; returns `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.text()).expect("write config");
        path.to_path_buf()
    }

    /// Parsed and validated, as the library reads it.
    pub fn config(&self) -> coffre::config::Config {
        coffre::config::Config::from_toml(&self.text(), Path::new("t.toml"))
            .unwrap_or_else(|e| panic!("test config rejected: {e}\n{}", self.text()))
    }
}
