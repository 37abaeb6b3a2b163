//! Epochs in use by snapshots still being protected, so that an early shred never destroys an
//! epoch key under which a snapshot is being sealed (its key object reaches the catalog only at
//! commit, after the upload).
//!
//! One registry per process: the daemon owns the state folder while it runs (commands reach it
//! through its socket), and a standalone command holds the state folder's lock, so every protect
//! and every shred of a state folder meet here.
//!
//! - `protect` enters the epoch before wrapping its data key and leaves it once the key object
//!   is in the catalog (or the attempt failed); entering an epoch that is closing waits until
//!   the shred is over, and the caller plans its epoch again.
//! - a shred closes the epoch: new entries wait, and it waits for the snapshots already inside
//!   to be committed (they are then epoch-mates it moves to a fresh epoch key) before it
//!   destroys the key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::ids::EpochId;

#[derive(Default)]
struct State {
    inside: HashMap<EpochId, usize>,
    closing: HashSet<EpochId>,
}

#[derive(Default, Clone)]
pub struct InFlight {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

/// A snapshot being protected under an epoch; leaves it on drop.
pub struct Entered {
    registry: InFlight,
    epoch: EpochId,
}

/// An epoch being shredded; reopens it on drop.
pub struct Closed {
    registry: InFlight,
    epoch: EpochId,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enter `epoch` now, or None when it is closing (wait with [`InFlight::wait_open`], then
    /// plan the epoch again: it is destroyed by then).
    pub fn try_enter(&self, epoch: &EpochId) -> Option<Entered> {
        let mut s = self.lock();
        if s.closing.contains(epoch) {
            return None;
        }
        *s.inside.entry(epoch.clone()).or_default() += 1;
        Some(Entered {
            registry: self.clone(),
            epoch: epoch.clone(),
        })
    }

    /// Wait until `epoch` is no longer closing.
    pub(crate) async fn wait_open(&self, epoch: &EpochId) {
        loop {
            let notified = self.changed.notified();
            if !self.lock().closing.contains(epoch) {
                return;
            }
            notified.await;
        }
    }

    /// Close `epoch` to new snapshots and wait for those inside to leave.
    pub async fn close(&self, epoch: &EpochId) -> Closed {
        self.lock().closing.insert(epoch.clone());
        let closed = Closed {
            registry: self.clone(),
            epoch: epoch.clone(),
        };
        loop {
            let notified = self.changed.notified();
            let n = self.lock().inside.get(epoch).copied().unwrap_or(0);
            if n == 0 {
                return closed;
            }
            tracing::info!(epoch = %epoch, snapshots = n, "shred waits for snapshots still being protected under this epoch");
            notified.await;
        }
    }

    /// Snapshots being protected under `epoch` now.
    pub fn inside(&self, epoch: &EpochId) -> usize {
        self.lock().inside.get(epoch).copied().unwrap_or(0)
    }
}

impl Closed {
    pub fn epoch(&self) -> &EpochId {
        &self.epoch
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut s = self.registry.lock();
        if let Some(n) = s.inside.get_mut(&self.epoch) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.inside.remove(&self.epoch);
            }
        }
        drop(s);
        self.registry.changed.notify_waiters();
    }
}

impl Drop for Closed {
    fn drop(&mut self) {
        self.registry.lock().closing.remove(&self.epoch);
        self.registry.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn epoch(s: &str) -> EpochId {
        EpochId::try_from(s.to_string()).unwrap()
    }

    #[tokio::test]
    async fn a_shred_waits_for_snapshots_inside_and_new_ones_wait_for_the_shred() {
        let r = InFlight::default();
        let e = epoch("2026-12-31.1");
        let inside = r.try_enter(&e).unwrap();
        let r2 = r.clone();
        let e2 = e.clone();
        let shred = tokio::spawn(async move {
            let closed = r2.close(&e2).await;
            // Destroying the key happens here, with nobody inside.
            assert_eq!(r2.inside(&e2), 0);
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(closed);
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!shred.is_finished(), "the shred did not wait");
        // Closing: a new snapshot may not enter.
        assert!(r.try_enter(&e).is_none());
        drop(inside);
        r.wait_open(&e).await;
        shred.await.unwrap();
        assert!(r.try_enter(&e).is_some());
        // Other epochs are never held up.
        assert!(r.try_enter(&epoch("2027-01-01.1")).is_some());
    }
}
