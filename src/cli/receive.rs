//! The caller's side of a restore through the daemon: what the daemon streams (`B` and `D`
//! frames) is written here, with the caller's own rights, by a writer thread into the
//! [`RestoreDestination`] beside the target; for `wal-fetch`, the daemon writes into an empty
//! file the caller created there and passed (`W` frame). Moved into place only when the daemon
//! says every check passed.
//!
//! May call: `ops::snapshot::destination` (the place), `ops::snapshot::restore` (its file and tar writers).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::ids::SnapshotId;
use crate::ops::snapshot::destination::RestoreDestination;
use crate::store::SnapshotKind;

/// Why a restore's plaintext did not reach its destination (nothing is left there).
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nothing was restored")]
    Nothing,
    #[error("cannot write {}: {source}", to.display())]
    Write { to: PathBuf, source: std::io::Error },
    #[error("the writer of {} stopped", to.display())]
    WriterPanicked { to: PathBuf },
    #[error("the writer stopped")]
    WriterStopped,
    #[error("cannot start the writer: {0}")]
    Spawn(std::io::Error),
    #[error("the daemon began a second restore on one request")]
    SecondRestore,
    #[error("restored data before its header")]
    DataBeforeHeader,
    #[error("the daemon wrote into a file that was not passed")]
    NotPassed,
    #[error("the daemon wrote {got} bytes of the {announced} it announced; nothing was left at {}", to.display())]
    ShortWrite {
        got: u64,
        announced: u64,
        to: PathBuf,
    },
    #[error("cannot check the file written: {0}")]
    Check(std::io::Error),
    #[error("received {got} bytes of the {size} the snapshot holds; nothing was left at {}", to.display())]
    ShortRestore { got: u64, size: u64, to: PathBuf },
    #[error("cannot move the {what} to {}: {source}; nothing was left there", to.display())]
    Rename {
        what: &'static str,
        to: PathBuf,
        source: std::io::Error,
    },
}

/// A restore's plaintext arriving from the daemon, and where it goes.
pub struct Incoming {
    dest: RestoreDestination,
    size: u64,
    tx: Option<SyncSender<Bytes>>,
    writer: Option<JoinHandle<std::io::Result<u64>>>,
    progress: Option<indicatif::ProgressBar>,
    show_progress: bool,
    done: bool,
    /// The empty file created at the destination for the daemon to write into ([`prepare`]).
    prepared: Option<std::fs::File>,
    /// The daemon wrote the plaintext into the prepared file.
    written: bool,
}

impl Incoming {
    pub fn new(to: PathBuf, show_progress: bool) -> Incoming {
        Incoming {
            dest: RestoreDestination::new(to),
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

    fn to(&self) -> PathBuf {
        self.dest.to().to_path_buf()
    }

    /// Create an empty private file beside the target and return a descriptor of it to pass
    /// to the daemon, which writes the plaintext into it (`wal-fetch`).
    pub fn prepare(&mut self) -> Result<OwnedFd, ReceiveError> {
        // One name per target, cleared first: a fetch killed before its rename leaves at
        // most one such file beside %p, removed by the next fetch to it.
        let path = crate::ops::snapshot::destination::partial_path_tagged(self.dest.to(), "fetch");
        let create = |source| ReceiveError::Create { path, source };
        let f = self.dest.create_file("fetch");
        let fd = f.and_then(|f| Ok((f.try_clone()?, f)));
        let (fd, f) = fd.map_err(create)?;
        self.prepared = Some(f);
        Ok(fd.into())
    }

    /// Remove the prepared file, unused.
    fn drop_prepared(&mut self) {
        if self.prepared.take().is_some() {
            self.dest.abort();
        }
    }

    fn join(&mut self) -> Result<u64, ReceiveError> {
        self.tx = None;
        if let Some(pb) = self.progress.take() {
            pb.finish_and_clear();
        }
        match self.writer.take() {
            None => Err(ReceiveError::Nothing),
            Some(h) => match h.join() {
                Ok(Ok(n)) => Ok(n),
                Ok(Err(source)) => Err(ReceiveError::Write {
                    to: self.to(),
                    source,
                }),
                Err(_) => Err(ReceiveError::WriterPanicked { to: self.to() }),
            },
        }
    }

    /// The plaintext of `snapshot` (`size` bytes of a `kind` snapshot) comes next, in [`data`].
    pub fn begin(
        &mut self,
        snapshot: &SnapshotId,
        kind: SnapshotKind,
        size: u64,
    ) -> Result<(), ReceiveError> {
        if self.writer.is_some() || self.written {
            return Err(ReceiveError::SecondRestore);
        }
        // The daemon sends the bytes instead of writing them into the prepared file.
        self.drop_prepared();
        let tmp = self.dest.scratch(&snapshot.to_string());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(4);
        let h = std::thread::Builder::new()
            .name("coffre-restore-write".into())
            .spawn(move || match kind {
                SnapshotKind::File | SnapshotKind::Wal => {
                    crate::ops::snapshot::restore::write_file(rx, &tmp)
                }
                SnapshotKind::Directory => crate::ops::snapshot::restore::unpack_tar(rx, &tmp),
            })
            .map_err(ReceiveError::Spawn)?;
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
    pub fn data(&mut self, bytes: Vec<u8>) -> Result<(), ReceiveError> {
        let n = bytes.len() as u64;
        let sent = match &self.tx {
            Some(tx) => tx.send(Bytes::from(bytes)).is_ok(),
            None => return Err(ReceiveError::DataBeforeHeader),
        };
        if !sent {
            // The writer stopped: its error says why.
            let e = self.join().err().unwrap_or(ReceiveError::WriterStopped);
            self.abort();
            return Err(e);
        }
        if let Some(pb) = &self.progress {
            pb.inc(n);
        }
        Ok(())
    }

    /// The daemon wrote the whole plaintext, `size` bytes, into the [`prepare`]d file.
    pub fn written(&mut self, size: u64) -> Result<(), ReceiveError> {
        let Some(f) = self.prepared.take() else {
            return Err(ReceiveError::NotPassed);
        };
        if self.writer.is_some() || self.written {
            self.dest.abort();
            return Err(ReceiveError::SecondRestore);
        }
        let n = f.metadata().map(|m| m.len());
        drop(f);
        match n {
            Ok(n) if n == size => {
                self.size = n;
                self.written = true;
                Ok(())
            }
            Ok(n) => {
                self.abort();
                Err(ReceiveError::ShortWrite {
                    got: n,
                    announced: size,
                    to: self.to(),
                })
            }
            Err(e) => {
                self.abort();
                Err(ReceiveError::Check(e))
            }
        }
    }

    /// Every check passed: move it into place.
    pub fn finish(&mut self) -> Result<(), ReceiveError> {
        let what = if self.written {
            "WAL file"
        } else {
            self.drop_prepared();
            let n = match self.join() {
                Ok(n) => n,
                Err(e) => {
                    self.abort();
                    return Err(e);
                }
            };
            if self.dest.scratch_path().is_none() {
                return Err(ReceiveError::Nothing);
            }
            if n != self.size {
                self.abort();
                return Err(ReceiveError::ShortRestore {
                    got: n,
                    size: self.size,
                    to: self.to(),
                });
            }
            "restored snapshot"
        };
        if self.dest.scratch_path().is_none() {
            return Err(ReceiveError::Nothing);
        }
        if let Err(source) = self.dest.finish() {
            self.abort();
            return Err(ReceiveError::Rename {
                what,
                to: self.to(),
                source,
            });
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
        self.dest.abort();
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.done {
            self.abort();
        }
    }
}
