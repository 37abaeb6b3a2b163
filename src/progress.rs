//! What the process is doing now: one entry per snapshot being protected, copied, scrubbed,
//! restored or drilled, with bytes done, rate and estimated time left (`/status` `in_progress`,
//! `coffre status`).
//!
//! Invariant: an entry names only ids, source and store names and byte counts (nothing
//! personal, no file names); it disappears when its [`Tracker`] is dropped, whatever the outcome.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What a piece of work is (the worker that runs it, as named in `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activity {
    /// A new snapshot read, compressed and sealed (worker `intake`, or `coffre backup`).
    Protect,
    /// A lagging replica copied from a store that has it (worker `catch-up`).
    CatchUp,
    /// A bad replica repaired from a good one (worker `scrub`).
    Repair,
    /// A restore asked for by `coffre restore`.
    Restore,
    /// A drill's restore into its scratch folder (worker `drill`).
    Drill,
}

/// `total` when the size is not known (yet).
const UNKNOWN: u64 = u64::MAX;

struct Entry {
    done: AtomicU64,
    total: AtomicU64,
}

struct Task {
    activity: Activity,
    snapshot: String,
    source: String,
    store: Mutex<Option<String>>,
    started: Instant,
    entry: Entry,
}

/// One process's board of work in progress (cheap to clone: the daemon's components share it).
#[derive(Clone, Default)]
pub struct Board {
    tasks: Arc<Mutex<BTreeMap<u64, Arc<Task>>>>,
    next: Arc<AtomicU64>,
}

/// A piece of work on the board; leaves it on drop.
pub struct Tracker {
    board: Board,
    id: u64,
    task: Arc<Task>,
}

/// A piece of work as shown in `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub activity: Activity,
    pub snapshot: String,
    pub source: String,
    /// The store read from or written to, when there is one.
    pub store: Option<String>,
    pub bytes_done: u64,
    /// Bytes the work will have handled when done, when known beforehand.
    pub bytes_total: Option<u64>,
    pub elapsed_seconds: f64,
    /// Mean rate since the start.
    pub bytes_per_second: f64,
    /// Time left at the mean rate, when the total is known and some bytes are done.
    pub eta_seconds: Option<f64>,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put a piece of work on the board until the returned tracker is dropped.
    pub fn start(
        &self,
        activity: Activity,
        snapshot: &str,
        source: &str,
        store: Option<&str>,
        total: Option<u64>,
    ) -> Tracker {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let task = Arc::new(Task {
            activity,
            snapshot: snapshot.to_string(),
            source: source.to_string(),
            store: Mutex::new(store.map(str::to_string)),
            started: Instant::now(),
            entry: Entry {
                done: AtomicU64::new(0),
                total: AtomicU64::new(total.unwrap_or(UNKNOWN)),
            },
        });
        self.lock().insert(id, task.clone());
        Tracker {
            board: self.clone(),
            id,
            task,
        }
    }

    /// Everything in progress now, oldest first.
    pub fn list(&self) -> Vec<Progress> {
        let now = Instant::now();
        self.lock()
            .values()
            .map(|t| t.view(now.saturating_duration_since(t.started).as_secs_f64()))
            .collect()
    }
}

impl Task {
    fn view(&self, elapsed: f64) -> Progress {
        let done = self.entry.done.load(Ordering::Relaxed);
        let total = match self.entry.total.load(Ordering::Relaxed) {
            UNKNOWN => None,
            t => Some(t),
        };
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        Progress {
            activity: self.activity,
            snapshot: self.snapshot.clone(),
            source: self.source.clone(),
            store: self.store.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            bytes_done: done,
            bytes_total: total,
            elapsed_seconds: elapsed,
            bytes_per_second: rate,
            eta_seconds: eta(done, total, rate),
        }
    }
}

/// Seconds left at `rate` bytes per second, when the total is known and the rate is not zero.
fn eta(done: u64, total: Option<u64>, rate: f64) -> Option<f64> {
    let total = total?;
    (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate)
}

/// A handle that counts bytes for a tracker, for a thread that does the work (dropping it does
/// not take the work off the board).
#[derive(Clone)]
pub struct Counter(Arc<Task>);

impl Counter {
    /// `n` more bytes handled.
    pub fn add(&self, n: u64) {
        self.0.entry.done.fetch_add(n, Ordering::Relaxed);
    }

    /// `done` bytes handled in all (a position in the work).
    pub fn set(&self, done: u64) {
        self.0.entry.done.store(done, Ordering::Relaxed);
    }

    /// The work now reads from (or writes to) this store.
    pub(crate) fn switch_store(&self, store: &str) {
        *self.0.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(store.to_string());
    }

    /// The size of the whole work, once known.
    pub(crate) fn set_total(&self, total: u64) {
        self.0.entry.total.store(total, Ordering::Relaxed);
    }
}

impl Tracker {
    /// `n` more bytes handled.
    pub fn add(&self, n: u64) {
        self.task.entry.done.fetch_add(n, Ordering::Relaxed);
    }

    /// A byte counter for another thread.
    pub(crate) fn counter(&self) -> Counter {
        Counter(self.task.clone())
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.board.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_listed_with_its_bytes_until_its_tracker_is_dropped() {
        let board = Board::default();
        let t = board.start(Activity::Protect, "01ABC", "emr", None, Some(1000));
        let u = board.start(Activity::CatchUp, "01DEF", "emr", Some("s3-east"), None);
        t.add(250);
        t.add(250);
        let list = board.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].activity, Activity::Protect);
        assert_eq!(list[0].bytes_done, 500);
        assert_eq!(list[0].bytes_total, Some(1000));
        assert_eq!(list[1].store.as_deref(), Some("s3-east"));
        assert_eq!(list[1].eta_seconds, None, "no total, no estimate");
        u.counter().switch_store("azure");
        u.counter().set_total(40);
        u.counter().add(4);
        assert_eq!(board.list()[1].bytes_total, Some(40));
        assert_eq!(board.list()[1].bytes_done, 4);
        assert_eq!(board.list()[1].store.as_deref(), Some("azure"));
        drop(t);
        let list = board.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].snapshot, "01DEF");
        drop(u);
        assert!(board.list().is_empty());
    }

    #[test]
    fn eta_is_what_is_left_at_the_mean_rate() {
        assert_eq!(eta(250, Some(1000), 50.0), Some(15.0));
        assert_eq!(eta(1200, Some(1000), 50.0), Some(0.0));
        assert_eq!(eta(0, Some(1000), 0.0), None);
        assert_eq!(eta(10, None, 5.0), None);
    }

    #[test]
    fn the_json_names_the_activity_in_kebab_case() {
        let board = Board::default();
        let _t = board.start(Activity::CatchUp, "01X", "emr", Some("b"), Some(10));
        let v = serde_json::to_value(board.list()).unwrap();
        assert_eq!(v[0]["activity"], "catch-up");
        assert_eq!(v[0]["bytes_total"], 10);
    }
}
