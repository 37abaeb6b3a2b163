//! Authentication of the store objects that destruction decisions read: a snapshot's key object
//! (its epoch, hence when it is shredded, and its legal hold) together with its manifest.
//!
//! Neither carries any secret, and anyone with write access to one store could edit them: move a
//! held snapshot to an older epoch without its hold, so that a `catalog rebuild` followed by
//! retention would shred it everywhere. So each key object carries one HMAC-SHA-256 tag per key
//! provider over (key object without its tags, manifest), under the provider's
//! object-authentication key ([`crate::keys::KeyProvider::object_auth_key`]), which the stores
//! never see. Tags are checked when the catalog is rebuilt from the stores, when a restore reads
//! a store's key object, and before a shred deletes a copy.
//!
//! Key objects written before tags existed are *unsealed*: they still restore, and an operator
//! authenticates them once with `coffre catalog seal` (which checks that every store agrees
//! with the catalog first). A shred never deletes a copy on the word of an unsealed key object.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::format::objects::{AuthTag, KeyObject, Manifest};
use crate::keys::{KeyError, KeyProvider};

/// What a key object's tags say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Every tag of a configured provider verifies (at least one).
    Authentic,
    /// No tags: written before authentication existed (`coffre catalog seal`).
    Unsealed,
    /// A tag does not verify: the key object or its manifest was changed outside coffre.
    Forged { provider: String },
    /// Tags exist but no configured provider can check them.
    Unverifiable { reason: String },
}

impl Check {
    pub(crate) fn is_authentic(&self) -> bool {
        matches!(self, Check::Authentic)
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Authentic => f.write_str("authentic"),
            Check::Unsealed => f.write_str(
                "unsealed (written before key objects were authenticated: run `coffre catalog seal`)",
            ),
            Check::Forged { provider } => write!(
                f,
                "FORGED: its tag under provider `{provider}` does not verify (the key object or the manifest was changed outside coffre)"
            ),
            Check::Unverifiable { reason } => write!(f, "cannot be checked: {reason}"),
        }
    }
}

/// The object-authentication keys of the configured providers.
pub struct ObjectAuth {
    keys: Vec<(String, Zeroizing<[u8; 32]>)>,
    /// Providers whose key is not available, and why.
    missing: Vec<(String, String)>,
}

type HmacSha256 = Hmac<Sha256>;

fn message(k: &KeyObject, m: &Manifest) -> Vec<u8> {
    let mut k = k.clone();
    k.auth.clear();
    let mut msg = b"coffre/v1/snapshot-auth\0".to_vec();
    msg.extend_from_slice(&serde_json::to_vec(&k).unwrap_or_default());
    msg.push(0);
    msg.extend_from_slice(&serde_json::to_vec(m).unwrap_or_default());
    msg
}

fn mac(key: &[u8; 32], msg: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: new_from_slice cannot fail for 32 bytes.
    let mut h = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    h.update(msg);
    h
}

impl ObjectAuth {
    /// For writing tags: every provider's key, created when missing. Any provider that cannot
    /// give one is an error (a tag missing for one provider would make its hosts unable to check).
    pub fn for_writing(
        providers: &[std::sync::Arc<dyn KeyProvider>],
    ) -> Result<ObjectAuth, KeyError> {
        let mut keys = Vec::new();
        for p in providers {
            keys.push((p.name().to_string(), p.object_auth_key(true)?));
        }
        Ok(ObjectAuth {
            keys,
            missing: Vec::new(),
        })
    }

    /// For checking tags: the providers that hold the key already (never creates one).
    pub(crate) fn for_reading(providers: &[std::sync::Arc<dyn KeyProvider>]) -> ObjectAuth {
        let mut keys = Vec::new();
        let mut missing = Vec::new();
        for p in providers {
            match p.object_auth_key(false) {
                Ok(k) => keys.push((p.name().to_string(), k)),
                Err(e) => missing.push((p.name().to_string(), e.to_string())),
            }
        }
        ObjectAuth { keys, missing }
    }

    /// The tags of `k` with manifest `m`.
    pub fn tags(&self, k: &KeyObject, m: &Manifest) -> Vec<AuthTag> {
        let msg = message(k, m);
        self.keys
            .iter()
            .map(|(provider, key)| AuthTag {
                provider: provider.clone(),
                hmac: hex::encode(mac(key, &msg).finalize().into_bytes()),
            })
            .collect()
    }

    /// Replace the tags of `k` (after any change to it).
    pub fn seal(&self, k: &mut KeyObject, m: &Manifest) {
        k.auth = self.tags(k, m);
    }

    pub fn check(&self, k: &KeyObject, m: &Manifest) -> Check {
        if k.auth.is_empty() {
            return Check::Unsealed;
        }
        let msg = message(k, m);
        let mut verified = 0;
        for t in &k.auth {
            let Some((_, key)) = self.keys.iter().find(|(p, _)| p == &t.provider) else {
                continue;
            };
            let ok = hex::decode(&t.hmac)
                .ok()
                .is_some_and(|tag| mac(key, &msg).verify_slice(&tag).is_ok());
            if !ok {
                return Check::Forged {
                    provider: t.provider.clone(),
                };
            }
            verified += 1;
        }
        if verified > 0 {
            return Check::Authentic;
        }
        let tagged: Vec<&str> = k.auth.iter().map(|t| t.provider.as_str()).collect();
        let why: Vec<String> = self
            .missing
            .iter()
            .map(|(p, e)| format!("provider `{p}`: {e}"))
            .collect();
        Check::Unverifiable {
            reason: format!(
                "tagged by provider(s) {} and none of them can check here{}",
                tagged.join(", "),
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", why.join("; "))
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::objects::Wrap;
    use crate::ids::{EpochId, SnapshotId};

    fn auth(names: &[&str]) -> ObjectAuth {
        ObjectAuth {
            keys: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), Zeroizing::new([i as u8 + 1; 32])))
                .collect(),
            missing: Vec::new(),
        }
    }

    fn objects() -> (KeyObject, Manifest) {
        let id = SnapshotId::new();
        let m = crate::format::objects::sample_manifest(id);
        let k = KeyObject {
            format: crate::format::objects::KEY_OBJECT_FORMAT,
            snapshot: id,
            source: "emr".into(),
            epoch: EpochId::try_from("2027-01-01.1".to_string()).unwrap(),
            planned_expiry: "2027-01-01T00:00:00Z".into(),
            wraps: vec![Wrap {
                provider: "local".into(),
                kind: "file".into(),
                algorithm: "aes256-kwp".into(),
                epoch: EpochId::try_from("2027-01-01.1".to_string()).unwrap(),
                wrapped: "AAAA".into(),
            }],
            legal_hold: Some("litigation".into()),
            auth: Vec::new(),
        };
        (k, m)
    }

    #[test]
    fn a_sealed_key_object_checks_and_any_edit_is_forged() {
        let a = auth(&["local"]);
        let (mut k, m) = objects();
        assert_eq!(a.check(&k, &m), Check::Unsealed);
        a.seal(&mut k, &m);
        assert_eq!(a.check(&k, &m), Check::Authentic);
        // Sealed bytes round-trip through JSON.
        let back = KeyObject::parse(&k.to_json()).unwrap();
        assert_eq!(a.check(&back, &m), Check::Authentic);

        let mut older = k.clone();
        older.epoch = EpochId::try_from("2026-12-01.1".to_string()).unwrap();
        assert!(matches!(a.check(&older, &m), Check::Forged { .. }));
        let mut unheld = k.clone();
        unheld.legal_hold = None;
        assert!(matches!(a.check(&unheld, &m), Check::Forged { .. }));
        let mut m2 = m.clone();
        m2.size += 1;
        assert!(matches!(a.check(&k, &m2), Check::Forged { .. }));
        // Tags from another key (another installation) do not verify.
        let other = auth(&["x", "local"]);
        let mut k2 = k.clone();
        other.seal(&mut k2, &m);
        assert!(matches!(a.check(&k2, &m), Check::Forged { .. }));
        // A stripped tag list is not authentic either.
        let mut stripped = k.clone();
        stripped.auth.clear();
        assert_eq!(a.check(&stripped, &m), Check::Unsealed);
    }

    #[test]
    fn tags_of_providers_not_configured_here_are_unverifiable() {
        let (mut k, m) = objects();
        auth(&["hsm"]).seal(&mut k, &m);
        let here = ObjectAuth {
            keys: Vec::new(),
            missing: vec![("local".into(), "no key".into())],
        };
        assert!(matches!(here.check(&k, &m), Check::Unverifiable { .. }));
    }
}
