//! Where a restore's plaintext is written when it arrives from elsewhere (the daemon, through
//! the control socket): by the caller, with its own rights, into a private temporary file or
//! folder beside the target, moved into place only when every check passed, and removed
//! otherwise. `coffre restore` and `coffre wal-fetch` through the daemon write with it; the
//! writing itself (file, tar unpacking, fsync, rename) is `ops::restore`'s.
//!
//! May call: `ops::restore` (its writers and the temporary names), `store` (the snapshot kind).

use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::ids::SnapshotId;
use crate::store::SnapshotKind;

/// One restore's destination on the caller's side: `to`, which must not exist.
pub struct RestoreDestination {
    to: PathBuf,
    tmp: Option<PathBuf>,
    size: u64,
    tx: Option<SyncSender<Bytes>>,
    writer: Option<JoinHandle<std::io::Result<u64>>>,
    progress: Option<indicatif::ProgressBar>,
    show_progress: bool,
    done: bool,
    /// An empty file opened beside the target for the daemon to write into ([`prepare`]).
    prepared: Option<(PathBuf, std::fs::File)>,
    /// The daemon wrote the plaintext into the prepared file.
    written: bool,
}

impl RestoreDestination {
    pub fn new(to: PathBuf, show_progress: bool) -> RestoreDestination {
        RestoreDestination {
            to,
            tmp: None,
            size: 0,
            tx: None,
            writer: None,
            progress: None,
            show_progress,
            done: false,
            prepared: None,
            written: false,
        }
    }

    /// Open an empty private file beside the target and return a descriptor of it to pass
    /// to the daemon, which writes the plaintext into it (`wal-fetch`).
    pub fn prepare(&mut self) -> Result<std::os::fd::OwnedFd, String> {
        use std::os::unix::fs::OpenOptionsExt;
        // One name per target, cleared first: a fetch killed before its rename leaves at
        // most one such file beside %p, removed by the next fetch to it.
        let tmp = crate::ops::restore::partial_path_tagged(&self.to, "fetch");
        crate::ops::restore::remove_any(&tmp);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let fd = f
            .try_clone()
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        self.prepared = Some((tmp, f));
        Ok(fd.into())
    }

    /// Remove the prepared file, unused.
    fn drop_prepared(&mut self) {
        if let Some((p, _)) = self.prepared.take() {
            crate::ops::restore::remove_any(&p);
        }
    }

    fn join(&mut self) -> Result<u64, String> {
        self.tx = None;
        if let Some(pb) = self.progress.take() {
            pb.finish_and_clear();
        }
        match self.writer.take() {
            None => Err("nothing was restored".into()),
            Some(h) => match h.join() {
                Ok(Ok(n)) => Ok(n),
                Ok(Err(e)) => Err(format!("cannot write {}: {e}", self.to.display())),
                Err(_) => Err(format!("the writer of {} stopped", self.to.display())),
            },
        }
    }

    /// The plaintext of `snapshot` (`size` bytes of a `kind` snapshot) comes next, in [`data`].
    pub fn begin(
        &mut self,
        snapshot: &SnapshotId,
        kind: SnapshotKind,
        size: u64,
    ) -> Result<(), String> {
        if self.writer.is_some() || self.written {
            return Err("the daemon began a second restore on one request".into());
        }
        // The daemon sends the bytes instead of writing them into the prepared file.
        self.drop_prepared();
        let tmp = crate::ops::restore::partial_path(&self.to, snapshot);
        crate::ops::restore::remove_any(&tmp);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(4);
        let t = tmp.clone();
        let h = std::thread::Builder::new()
            .name("coffre-restore-write".into())
            .spawn(move || match kind {
                SnapshotKind::File | SnapshotKind::Wal => crate::ops::restore::write_file(rx, &t),
                SnapshotKind::Directory => crate::ops::restore::unpack_tar(rx, &t),
            })
            .map_err(|e| format!("cannot start the writer: {e}"))?;
        self.tmp = Some(tmp);
        self.size = size;
        self.tx = Some(tx);
        self.writer = Some(h);
        if self.show_progress {
            let pb = indicatif::ProgressBar::new(size);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            self.progress = Some(pb);
        }
        Ok(())
    }

    /// The next bytes of the plaintext.
    pub fn data(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        let n = bytes.len() as u64;
        let sent = match &self.tx {
            Some(tx) => tx.send(Bytes::from(bytes)).is_ok(),
            None => return Err("restored data before its header".into()),
        };
        if !sent {
            // The writer stopped: its error says why.
            let e = self
                .join()
                .err()
                .unwrap_or_else(|| "the writer stopped".into());
            self.abort();
            return Err(e);
        }
        if let Some(pb) = &self.progress {
            pb.inc(n);
        }
        Ok(())
    }

    /// The daemon wrote the whole plaintext, `size` bytes, into the [`prepare`]d file.
    pub fn written(&mut self, size: u64) -> Result<(), String> {
        let Some((tmp, f)) = self.prepared.take() else {
            return Err("the daemon wrote into a file that was not passed".into());
        };
        if self.writer.is_some() || self.written {
            crate::ops::restore::remove_any(&tmp);
            return Err("the daemon began a second restore on one request".into());
        }
        let n = f.metadata().map(|m| m.len());
        drop(f);
        self.tmp = Some(tmp);
        match n {
            Ok(n) if n == size => {
                self.size = n;
                self.written = true;
                Ok(())
            }
            Ok(n) => {
                self.abort();
                Err(format!(
                    "the daemon wrote {n} bytes of the {} it announced; nothing was left at {}",
                    size,
                    self.to.display()
                ))
            }
            Err(e) => {
                self.abort();
                Err(format!("cannot check the file written: {e}"))
            }
        }
    }

    /// Every check passed: move it into place.
    pub fn finish(&mut self) -> Result<(), String> {
        if self.written {
            let Some(tmp) = self.tmp.clone() else {
                return Err("nothing was restored".into());
            };
            if let Err(e) = crate::ops::restore::rename_into_place(&tmp, &self.to) {
                self.abort();
                return Err(format!(
                    "cannot move the WAL file to {}: {e}; nothing was left there",
                    self.to.display()
                ));
            }
            self.done = true;
            return Ok(());
        }
        self.drop_prepared();
        let n = match self.join() {
            Ok(n) => n,
            Err(e) => {
                self.abort();
                return Err(e);
            }
        };
        let Some(tmp) = self.tmp.clone() else {
            return Err("nothing was restored".into());
        };
        if n != self.size {
            self.abort();
            return Err(format!(
                "received {n} bytes of the {} the snapshot holds; nothing was left at {}",
                self.size,
                self.to.display()
            ));
        }
        if let Err(e) = crate::ops::restore::rename_into_place(&tmp, &self.to) {
            self.abort();
            return Err(format!(
                "cannot move the restored snapshot to {}: {e}; nothing was left there",
                self.to.display()
            ));
        }
        self.done = true;
        Ok(())
    }

    /// Something failed: remove what was written.
    pub fn abort(&mut self) {
        self.drop_prepared();
        if self.writer.is_some() {
            let _ = self.join();
        }
        if let Some(t) = self.tmp.take() {
            crate::ops::restore::remove_any(&t);
        }
    }
}

impl Drop for RestoreDestination {
    fn drop(&mut self) {
        if !self.done {
            self.abort();
        }
    }
}
