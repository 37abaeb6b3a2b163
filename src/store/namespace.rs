//! Host namespaces in shared stores: which part of a store is this host's, and the claim that
//! keeps two hosts from using one host id (issue 30).
//!
//! Many hosts may share one bucket or container. Each host writes only beneath its namespace:
//! `<prefix>/hosts/<host>`, or `<prefix>` itself for the one host that owns the store's root.
//! The root belongs to the first host that claimed it (`<prefix>/root-owner.json`, written with
//! `PutMode::Create`): a store written before hosts had namespaces keeps every object where it
//! is, and a single-host deployment sees the layout it always had. Every other host gets
//! `hosts/<host>` and claims it with `<prefix>/hosts/<host>/claim.json`.
//!
//! The layout (root or hosts) is decided once per host, the first time this version opens its
//! state folder, and kept in `<state>/host.json` with the host's instance id (random, made
//! here): the same layout in every store, so one rule finds every object of this host.
//! Deciding only reads. The claim is written, and checked, before the first write of this
//! process to a store ([`Claimant::ensure`], called by every writing method of
//! [`crate::store::Store`]): a restore on a new machine reads without claiming anything, and a
//! second host configured with an id already claimed by another installation is refused at
//! its first write, with what to do. A machine that replaces a lost host takes the claim over
//! explicitly (`coffre catalog rebuild --host <its id>`), and that is logged.
//!
//! Uses: `crate::store` (its object store, paths), `crate::fsutil` (the state file). Nothing
//! here sees key material or snapshot contents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use object_store::path::Path as ObjPath;
use serde::{Deserialize, Serialize};

use super::{ErrorKind, Store, StoreError, WriteGuard};

/// The claim file format this version writes and reads.
const CLAIM_FORMAT: u32 = 1;
/// Largest claim object read back.
const MAX_CLAIM: u64 = 64 * 1024;
/// How long a claim found in a store holds before a write checks it again (one small read per
/// store and hour).
pub const RECHECK: Duration = Duration::from_secs(3600);
/// How many manifests at a store's root are read to see whose objects are there.
const ROOT_SAMPLE: usize = 16;

/// Where a host's namespace is, the same in every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `<prefix>`: this host owns the root.
    Root,
    /// `<prefix>/hosts/<host>`.
    Hosts,
}

/// A host's claim on its namespace in one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub format: u32,
    pub host: String,
    /// The installation that claimed it: random, kept in `<state>/host.json`.
    pub instance: String,
    pub claimed: String,
}

/// `<state>/host.json`: this host's id, instance and layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostRecord {
    format: u32,
    host: String,
    instance: String,
    layout: Layout,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    #[error("this state folder ({path}) belongs to host `{recorded}`, but the config says host = \"{configured}\": a host's id cannot change, its objects live under it in every store. Put back host = \"{recorded}\", or give the new id its own state folder")]
    Renamed {
        path: PathBuf,
        recorded: String,
        configured: String,
    },
    #[error("store `{store}`: host id `{host}` is already claimed there by another installation (instance {theirs}, claimed {when}); two hosts must not share a host id, and nothing was written. Give this host its own `host = \"...\"` in the config; if this machine replaces the lost `{host}`, run `coffre catalog rebuild --host {host}`, which takes the claim over and logs it")]
    Claimed {
        store: String,
        host: String,
        theirs: String,
        when: String,
    },
    #[error("store `{store}`: the root is claimed by host `{owner}`, but this host keeps its objects at the root of the stores (it owned them before hosts had namespaces): the stores were shared by several hosts. Give each host its own prefix in this store, or move this host's state folder aside so that it starts in its own namespace")]
    RootTaken { store: String, owner: String },
    #[error("store `{store}`: {path} is not a valid host claim ({reason}); it was not written by coffre. Remove it only if no host uses it")]
    BadClaim {
        store: String,
        path: String,
        reason: String,
    },
    #[error("the host record {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The claims of this process: shared by every store, asked before each write.
#[derive(Debug)]
pub struct Claimant {
    /// Fixed once settled: the host, its instance and its layout.
    record: HostRecord,
    /// Stores where this process found (or wrote) this installation's claim, and when. Kept
    /// in memory only: every process checks again at its first write, and a long-running one
    /// again once [`Claimant::recheck`] has passed, so an installation whose claim was taken
    /// over stops writing within that time.
    confirmed: Mutex<BTreeMap<String, Instant>>,
    /// How long a confirmation holds, in seconds ([`RECHECK`]; tests make it 0).
    recheck: std::sync::atomic::AtomicU64,
    /// Set by a recovery that replaces a lost host: a claim of another instance is taken over.
    take_over: std::sync::atomic::AtomicBool,
    /// Claims taken over by this process (store names), for the access log.
    taken_over: Mutex<Vec<String>>,
}

impl Claimant {
    pub fn host(&self) -> String {
        self.record.host.clone()
    }
    pub fn instance(&self) -> String {
        self.record.instance.clone()
    }
    pub fn layout(&self) -> Layout {
        self.record.layout
    }
    /// Where this host's keys are among other hosts' in a shared key store (a PKCS#11 token's
    /// labels): empty for the root owner (the labels it always had), `<host>/` for the others.
    pub fn label_namespace(&self) -> String {
        match self.record.layout {
            Layout::Root => String::new(),
            Layout::Hosts => format!("{}/", self.record.host),
        }
    }

    /// Let the next claims replace another installation's (a machine replacing a lost host).
    pub fn take_over(&self) {
        self.take_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
    /// The stores whose claim this process took over.
    pub fn taken_over(&self) -> Vec<String> {
        self.taken_over
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Make sure this host's claim is in `store` before anything is written there: a no-op
    /// while a confirmation holds, else the claim is written with `PutMode::Create` and, when
    /// one is there already, it must be this installation's.
    pub async fn ensure(&self, store: &Store) -> Result<(), NamespaceError> {
        if self.confirmed().get(&store.name).is_some_and(|at| {
            at.elapsed()
                < Duration::from_secs(self.recheck.load(std::sync::atomic::Ordering::Relaxed))
        }) {
            return Ok(());
        }
        let HostRecord {
            host,
            instance,
            layout,
            ..
        } = self.record.clone();
        let path = claim_path(store, layout, &host);
        let mine = Claim {
            format: CLAIM_FORMAT,
            host: host.clone(),
            instance,
            claimed: crate::clock::now_rfc3339(),
        };
        let body = serde_json::to_vec_pretty(&mine).unwrap_or_default();
        match store.put_new_unclaimed(&path, body.clone().into()).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let theirs =
                    read_claim(store, &path)
                        .await?
                        .ok_or_else(|| NamespaceError::BadClaim {
                            store: store.name.clone(),
                            path: path.to_string(),
                            reason: "it vanished while it was read".into(),
                        })?;
                self.check_theirs(store, &path, &mine, &theirs, body)
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        self.confirmed().insert(store.name.clone(), Instant::now());
        Ok(())
    }

    fn confirmed(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Instant>> {
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn check_theirs(
        &self,
        store: &Store,
        path: &ObjPath,
        mine: &Claim,
        theirs: &Claim,
        body: Vec<u8>,
    ) -> Result<(), NamespaceError> {
        if theirs.host != mine.host {
            // Only the root claim can name another host: the root is not this host's.
            return Err(NamespaceError::RootTaken {
                store: store.name.clone(),
                owner: theirs.host.clone(),
            });
        }
        if theirs.instance == mine.instance {
            return Ok(());
        }
        if !self.take_over.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(NamespaceError::Claimed {
                store: store.name.clone(),
                host: mine.host.clone(),
                theirs: theirs.instance.clone(),
                when: theirs.claimed.clone(),
            });
        }
        store.put_unclaimed(path, body.into()).await?;
        tracing::warn!(store = %store.name, host = %mine.host, previous = %theirs.instance, "host claim taken over by this installation");
        self.taken_over
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(store.name.clone());
        Ok(())
    }
}

impl WriteGuard for Claimant {
    fn before_write<'a>(
        &'a self,
        store: &'a Store,
    ) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.ensure(store).await.map_err(|e| match e {
                NamespaceError::Store(e) => e,
                other => StoreError::Claim {
                    store: store.name.clone(),
                    reason: other.to_string(),
                },
            })
        })
    }
}

/// Where the claim of `host` is in `store` for a layout.
fn claim_path(store: &Store, layout: Layout, host: &str) -> ObjPath {
    match layout {
        Layout::Root => store.prefix.clone().join("root-owner.json"),
        Layout::Hosts => store
            .prefix
            .clone()
            .join("hosts")
            .join(host)
            .join("claim.json"),
    }
}

/// A claim object, or `None` when there is none.
async fn read_claim(store: &Store, path: &ObjPath) -> Result<Option<Claim>, NamespaceError> {
    let bytes = match store.get_small(path, MAX_CLAIM).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // The reason may quote the store's bytes (serde names an unknown field): escaped and cut.
    let bad = |reason: String| NamespaceError::BadClaim {
        store: store.name.clone(),
        path: path.to_string(),
        reason: reason
            .chars()
            .take(200)
            .collect::<String>()
            .escape_debug()
            .to_string(),
    };
    let claim: Claim = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if claim.format != CLAIM_FORMAT {
        return Err(bad(format!(
            "format {} is not supported: upgrade coffre",
            claim.format
        )));
    }
    crate::config::check_host_id(&claim.host).map_err(|e| bad(e.to_string()))?;
    // Both reach error messages and logs: a ULID and an RFC 3339 time, nothing else.
    if claim.instance.parse::<ulid::Ulid>().is_err() {
        return Err(bad("its instance is not a ULID".into()));
    }
    if time::OffsetDateTime::parse(
        &claim.claimed,
        &time::format_description::well_known::Rfc3339,
    )
    .is_err()
    {
        return Err(bad("its claim time is not an RFC 3339 time".into()));
    }
    Ok(Some(claim))
}

/// What one store says about where `host` belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The root claim names this host.
    RootMine,
    /// `hosts/<host>/claim.json` is there.
    HostsClaim,
    /// The root claim names another host.
    RootTaken,
    /// No claim; the root holds objects of other hosts only.
    RootOthers,
    /// No claim; the root is empty or holds this host's objects.
    RootFree,
}

/// What `store` says; `None` when it does not answer.
async fn survey(store: &Store, host: &str) -> Option<Seen> {
    let seen = async {
        match read_claim(store, &claim_path(store, Layout::Root, host)).await? {
            Some(c) if c.host == host => return Ok(Seen::RootMine),
            Some(_) => return Ok(Seen::RootTaken),
            None => {}
        }
        if read_claim(store, &claim_path(store, Layout::Hosts, host))
            .await?
            .is_some()
        {
            return Ok(Seen::HostsClaim);
        }
        Ok::<_, NamespaceError>(if root_is_free_for(store, host).await? {
            Seen::RootFree
        } else {
            Seen::RootOthers
        })
    };
    match seen.await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(store = %store.name, error = %e, "store skipped while settling this host's namespace");
            None
        }
    }
}

/// True when the store's unclaimed root holds nothing, or objects of `host` (its manifests name
/// it): a store written before hosts had namespaces, by this host.
async fn root_is_free_for(store: &Store, host: &str) -> Result<bool, StoreError> {
    let root = store.prefix.clone();
    let mut names_me = false;
    let mut holds_any = false;
    for (source, id) in store
        .list_manifests_under(&root.clone().join("snapshots"))
        .await?
        .into_iter()
        .take(ROOT_SAMPLE)
    {
        holds_any = true;
        let path = root
            .clone()
            .join("snapshots")
            .join(source.as_str())
            .join(id.to_string())
            .join("manifest.json");
        if let Ok(bytes) = store.get_small(&path, 1024 * 1024).await {
            if let Ok(m) = super::Manifest::parse(&bytes) {
                names_me |= m.host == host;
            }
        }
    }
    for dir in ["keyring", "wal", "audit"] {
        holds_any |= !store.list_page(&root.clone().join(dir)).await?.is_empty();
    }
    Ok(!holds_any || names_me)
}

/// Decide (or read back) this host's layout and set every store's root owner. Reads only.
///
/// `pre_fleet`: the state folder was used by a version without namespaces (its objects are at
/// the stores' roots).
pub async fn settle(
    stores: &mut [Store],
    state_dir: &Path,
    host: &str,
    pre_fleet: bool,
) -> Result<std::sync::Arc<Claimant>, NamespaceError> {
    let state = state_dir.join("host.json");
    let record = match read_record(&state)? {
        Some(r) if r.host != host => {
            return Err(NamespaceError::Renamed {
                path: state,
                recorded: r.host,
                configured: host.to_string(),
            })
        }
        Some(r) => r,
        None => {
            let layout = decide(stores, host, pre_fleet).await;
            let r = HostRecord {
                format: CLAIM_FORMAT,
                host: host.to_string(),
                instance: ulid::Ulid::new().to_string(),
                layout,
            };
            write_record(&state, &r)?;
            r
        }
    };
    let root_owner = (record.layout == Layout::Root).then(|| host.to_string());
    let claimant = std::sync::Arc::new(Claimant {
        record,
        confirmed: Default::default(),
        recheck: RECHECK.as_secs().into(),
        take_over: Default::default(),
        taken_over: Default::default(),
    });
    for s in stores.iter_mut() {
        s.root_owner = root_owner.clone();
        s.claimant = Some(claimant.clone() as std::sync::Arc<dyn WriteGuard>);
    }
    Ok(claimant)
}

/// The first layout: the root when a store's root claim names this host, or when no store
/// has a claim of this host and no root is another host's; `hosts/<host>` otherwise. A state
/// folder used before namespaces keeps the root unless another host has claimed it. Stores
/// that do not answer are left out; when none answers, the root (the rule for a first host;
/// its objects there keep the root its own next time).
async fn decide(stores: &[Store], host: &str, pre_fleet: bool) -> Layout {
    let mut seen = Vec::new();
    for s in stores {
        seen.extend(survey(s, host).await);
    }
    if seen.contains(&Seen::RootMine) {
        Layout::Root
    } else if seen.contains(&Seen::HostsClaim)
        || seen.contains(&Seen::RootTaken)
        || (seen.contains(&Seen::RootOthers) && !pre_fleet)
    {
        Layout::Hosts
    } else {
        Layout::Root
    }
}

fn read_record(path: &Path) -> Result<Option<HostRecord>, NamespaceError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(NamespaceError::State {
                path: path.to_path_buf(),
                reason: format!("cannot be read: {e}"),
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| NamespaceError::State {
            path: path.to_path_buf(),
            reason: format!("is not a host record ({e}); restore it from a backup of the state folder, or move it aside to settle the host again"),
        })
}

fn write_record(path: &Path, r: &HostRecord) -> Result<(), NamespaceError> {
    let bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
    crate::fsutil::write_atomic(path, &bytes, 0o600).map_err(|e| NamespaceError::State {
        path: path.to_path_buf(),
        reason: format!("cannot be written: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::format::objects::sample_manifest;
    use crate::ids::SnapshotId;

    fn config(dir: &Path, host: &str, state: &str) -> Config {
        let text = format!(
            r#"
host = "{host}"
state-dir = "{d}/{state}"
[replication]
min-sites = 1
[[store]]
name = "a"
kind = "local"
site = "x"
jurisdiction = "CA-QC"
path = "{d}/store"
[[key-provider]]
name = "local"
kind = "file"
master-key = "{d}/keys/master.key"
create-master-key = true
"#,
            d = dir.display()
        );
        Config::from_toml(&text, Path::new("t")).unwrap()
    }

    /// The stores of `host` with state folder `state`, settled.
    async fn open(dir: &Path, host: &str, state: &str) -> (Vec<Store>, std::sync::Arc<Claimant>) {
        let c = config(dir, host, state);
        let mut stores = crate::store::build(&c).unwrap();
        let claimant = settle(&mut stores, &c.state_dir, host, false)
            .await
            .unwrap();
        (stores, claimant)
    }

    async fn write(s: &Store, name: &str) -> Result<(), StoreError> {
        s.put(&s.ns().join(name), b"x".to_vec().into()).await
    }

    fn claim_at(dir: &Path, rel: &str) -> Claim {
        serde_json::from_slice(&std::fs::read(dir.join("store").join(rel)).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_first_host_owns_the_root_and_the_next_ones_their_own_folder() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (s1, c1) = open(d, "h1", "s1").await;
        write(&s1[0], "one").await.unwrap();
        assert_eq!(c1.layout(), Layout::Root);
        assert!(d.join("store/coffre/one").is_file());
        assert_eq!(
            claim_at(d, "coffre/root-owner.json").instance,
            c1.instance()
        );

        let (s2, c2) = open(d, "h2", "s2").await;
        assert_eq!(c2.layout(), Layout::Hosts);
        write(&s2[0], "two").await.unwrap();
        assert!(d.join("store/coffre/hosts/h2/two").is_file());
        assert_eq!(claim_at(d, "coffre/hosts/h2/claim.json").host, "h2");
        // Their paths never meet: h1's snapshots folder does not hold h2's.
        let id = SnapshotId::new();
        assert!(!s2[0]
            .snapshot_dir("emr", &id)
            .as_ref()
            .starts_with(s1[0].snapshots_prefix().as_ref()));
        // Both keep their layout on the next open.
        assert_eq!(open(d, "h1", "s1").await.1.layout(), Layout::Root);
        assert_eq!(open(d, "h2", "s2").await.1.layout(), Layout::Hosts);
    }

    #[tokio::test]
    async fn a_second_installation_with_the_same_host_id_is_refused_at_its_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (s1, c1) = open(d, "h2", "s1").await;
        write(&s1[0], "one").await.unwrap();
        // The same id, another state folder: reading is fine, writing is refused.
        let (s2, c2) = open(d, "h2", "s2").await;
        assert_eq!(c2.layout(), Layout::Root);
        let e = write(&s2[0], "two").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::HostClaim);
        let text = e.to_string();
        assert!(
            text.contains("already claimed") && text.contains("catalog rebuild --host h2"),
            "{text}"
        );
        assert!(!d.join("store/coffre/two").exists());
        // Taken over explicitly, the new installation writes; the old one is then refused.
        c2.take_over();
        write(&s2[0], "two").await.unwrap();
        assert_eq!(c2.taken_over(), vec!["a".to_string()]);
        assert_eq!(
            claim_at(d, "coffre/root-owner.json").instance,
            c2.instance()
        );
        // The old installation, still running, is refused once its confirmation has aged
        // (an hour; no time here).
        c1.recheck.store(0, std::sync::atomic::Ordering::Relaxed);
        let e = write(&s1[0], "late").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::HostClaim, "{e}");
        assert!(!d.join("store/coffre/late").exists());
        // The old installation, started again, is refused at its first write.
        let (s1, _) = open(d, "h2", "s1").await;
        assert_eq!(
            write(&s1[0], "three").await.unwrap_err().kind(),
            ErrorKind::HostClaim
        );
    }

    #[tokio::test]
    async fn a_store_written_before_namespaces_stays_its_hosts_root() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // h1's objects at the root, no claim (an older version wrote them).
        let mut m = sample_manifest(SnapshotId::new());
        m.host = "h1".into();
        let at = d.join(format!("store/coffre/snapshots/emr/{}", m.snapshot));
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(at.join("manifest.json"), m.to_json()).unwrap();
        // Another host arriving gets its own folder, and leaves the root unclaimed...
        let (s2, c2) = open(d, "h2", "s2").await;
        assert_eq!(c2.layout(), Layout::Hosts);
        write(&s2[0], "x").await.unwrap();
        assert!(!d.join("store/coffre/root-owner.json").exists());
        // ...for h1, recovered on a new machine (its manifests name it), or upgraded.
        let (s1, c1) = open(d, "h1", "s1").await;
        assert_eq!(c1.layout(), Layout::Root);
        write(&s1[0], "y").await.unwrap();
        assert_eq!(claim_at(d, "coffre/root-owner.json").host, "h1");
        // A pre-fleet state folder keeps the root even when the sample names others only.
        let c = config(d, "h3", "s3");
        let mut stores = crate::store::build(&c).unwrap();
        std::fs::remove_file(d.join("store/coffre/root-owner.json")).unwrap();
        let c3 = settle(&mut stores, &c.state_dir, "h3", true).await.unwrap();
        assert_eq!(c3.layout(), Layout::Root);
    }

    #[tokio::test]
    async fn a_state_folder_keeps_its_host_id_and_a_forged_claim_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        open(d, "h1", "s1").await;
        let c = config(d, "h9", "s1");
        let mut stores = crate::store::build(&c).unwrap();
        let e = settle(&mut stores, &c.state_dir, "h9", false)
            .await
            .unwrap_err();
        assert!(matches!(e, NamespaceError::Renamed { .. }), "{e}");
        assert!(e.to_string().contains("host = \"h1\""), "{e}");

        // A claim that is not one (planted by someone with write access to the store).
        std::fs::create_dir_all(d.join("store/coffre")).unwrap();
        std::fs::write(
            d.join("store/coffre/root-owner.json"),
            br#"{"format":1,"host":"h1","instance":"01M995Z6AS4SCRDNM5G3PJBN6J","claimed":"2026-12-07T00:00:00Z"}"#,
        )
        .unwrap();
        for planted in [
            &b"{not json"[..],
            br#"{"format":1,"host":"../h1","instance":"01M995Z6AS4SCRDNM5G3PJBN6J","claimed":"2026-12-07T00:00:00Z"}"#,
            br#"{"format":1,"host":"h5","instance":"x\nforged log line","claimed":"2026-12-07T00:00:00Z"}"#,
            br#"{"format":1,"host":"h5","instance":"01M995Z6AS4SCRDNM5G3PJBN6J","claimed":"t'; \\ \n"}"#,
            br#"{"format":1,"host":"h5","instance":"01M995Z6AS4SCRDNM5G3PJBN6J","claimed":"t","extra":1}"#,
            br#"{"format":1,"forged log line\n":1}"#,
        ] {
            let _ = std::fs::remove_file(d.join("store/coffre/hosts/h5/claim.json"));
            let (s, c) = open(d, "h5", &format!("s5-{}", planted.len())).await;
            assert_eq!(c.layout(), Layout::Hosts);
            std::fs::create_dir_all(d.join("store/coffre/hosts/h5")).unwrap();
            std::fs::write(d.join("store/coffre/hosts/h5/claim.json"), planted).unwrap();
            let e = write(&s[0], "z").await.unwrap_err().to_string();
            assert!(e.contains("is not a valid host claim"), "{e}");
            // Nothing from the store reaches the message unescaped: no line can be forged.
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn hostile_host_ids_are_refused() {
        for bad in [
            "",
            "..",
            "../h1",
            "a/b",
            "a\\b",
            "h1\nh2",
            "h'1",
            "-x",
            ".x",
            "h\u{0}",
            &"h".repeat(64),
            &"é".repeat(3),
            &"x".repeat(64 * 1024),
        ] {
            let e = crate::config::check_host_id(bad).unwrap_err().to_string();
            assert!(e.contains("host id"), "{bad:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
            assert!(e.len() < 400, "{}", e.len());
        }
        for good in ["h1", "clinic-07.mtl", "db_2", &"h".repeat(63)] {
            crate::config::check_host_id(good).unwrap();
        }
    }
}
