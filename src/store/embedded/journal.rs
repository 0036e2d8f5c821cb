//! The embedded store: a directory with a snapshot and an append-only journal.
//!
//! ```text
//!   <path>/snapshot.json   every room's durable view, replaced atomically
//!   <path>/journal.jsonl   one record per line, appended since the snapshot
//!   <path>/lock            held while a gateway uses the directory
//! ```
//!
//! One writer thread owns the files. Writes arriving together are appended
//! together and made durable with a single `fsync` (group commit), so a burst
//! of claims costs one disk flush, not one each. A write's future resolves
//! only after its flush. When the journal grows past
//! [`COMPACT_AFTER_BYTES`], the writer writes a new snapshot (temp file,
//! fsync, rename, fsync of the directory) and truncates the journal.
//!
//! On open, a torn last journal line (a crash mid-append) is ignored: its
//! write never resolved, so nobody was promised it. Any other unreadable
//! line is reported as corruption rather than guessed at.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

use crate::queue::Durable;
use crate::store::{BoxFuture, Record, Store, StoreError};

/// Journal size that triggers a compaction.
pub const COMPACT_AFTER_BYTES: u64 = 8 * 1024 * 1024;
/// Most records appended under one fsync.
const MAX_BATCH: usize = 4096;

enum Op {
    Write(Record, oneshot::Sender<Result<(), StoreError>>),
    Close(oneshot::Sender<Result<(), StoreError>>),
}

pub struct EmbeddedStore {
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    views: Arc<Mutex<HashMap<String, Durable>>>,
    healthy: Arc<AtomicBool>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

struct Files {
    dir: PathBuf,
    journal: File,
    journal_len: u64,
    /// Journal size that triggers a compaction ([`COMPACT_AFTER_BYTES`]).
    compact_after: u64,
    _lock: File,
}

impl EmbeddedStore {
    /// Opens (or creates) the state directory, replays it and compacts it.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_compaction(dir, COMPACT_AFTER_BYTES)
    }

    /// As [`EmbeddedStore::open`], compacting once the journal passes `compact_after` bytes.
    pub fn open_with_compaction(
        dir: &Path,
        compact_after: u64,
    ) -> Result<EmbeddedStore, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("cannot open", &lock_path, e))?;
        lock.try_lock().map_err(|_| {
            StoreError::Io(format!(
                "{} is in use by another gateway process (lock held on {})",
                dir.display(),
                lock_path.display()
            ))
        })?;

        let views = load_views(dir)?;
        write_snapshot(dir, &views)?;
        let journal_path = dir.join("journal.jsonl");
        let journal = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&journal_path)
            .map_err(|e| io_err("cannot open", &journal_path, e))?;
        journal
            .sync_all()
            .map_err(|e| io_err("cannot sync", &journal_path, e))?;

        let views = Arc::new(Mutex::new(views));
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        let files = Files {
            dir: dir.to_path_buf(),
            journal,
            journal_len: 0,
            compact_after,
            _lock: lock,
        };
        let (v, h) = (views.clone(), healthy.clone());
        std::thread::Builder::new()
            .name("waitroom-store".into())
            .spawn(move || writer(files, rx, v, h))
            .map_err(|e| StoreError::Io(format!("cannot start the store writer: {e}")))?;
        Ok(EmbeddedStore {
            tx: Mutex::new(Some(tx)),
            views,
            healthy,
        })
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        let guard = self.tx.lock().map_err(|_| StoreError::Closed)?;
        match guard.as_ref() {
            Some(tx) => tx.send(op).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }
}

impl Store for EmbeddedStore {
    fn load(&self, room: &str) -> BoxFuture<'_, Result<Option<Durable>, StoreError>> {
        let view = self
            .views
            .lock()
            .map(|v| v.get(room).cloned())
            .map_err(|_| StoreError::Closed);
        Box::pin(async move { view })
    }

    fn write(&self, record: Record) -> BoxFuture<'_, Result<(), StoreError>> {
        let (done, wait) = oneshot::channel();
        let sent = self.send(Op::Write(record, done));
        Box::pin(async move {
            sent?;
            wait.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let (done, wait) = oneshot::channel();
        let sent = self.send(Op::Close(done));
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        Box::pin(async move {
            sent?;
            wait.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

fn load_views(dir: &Path) -> Result<HashMap<String, Durable>, StoreError> {
    let snapshot_path = dir.join("snapshot.json");
    let mut views: HashMap<String, Durable> = match fs::read(&snapshot_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", snapshot_path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
        Err(e) => return Err(io_err("cannot read", &snapshot_path, e)),
    };
    let journal_path = dir.join("journal.jsonl");
    let file = match File::open(&journal_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(views),
        Err(e) => return Err(io_err("cannot read", &journal_path, e)),
    };
    let mut lines = BufReader::new(file).split(b'\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let line = line.map_err(|e| io_err("cannot read", &journal_path, e))?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(record) => {
                let view = views.entry(record.room().to_string()).or_default();
                record.apply(view);
            }
            // The last line may be torn by a crash mid-append: never acknowledged.
            Err(_) if lines.peek().is_none() => {
                tracing::warn!(line = i + 1, "ignoring a torn last journal line");
            }
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                    "{} line {}: {e}",
                    journal_path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(views)
}

fn write_snapshot(dir: &Path, views: &HashMap<String, Durable>) -> Result<(), StoreError> {
    let tmp = dir.join("snapshot.json.tmp");
    let dst = dir.join("snapshot.json");
    let bytes = serde_json::to_vec(views)
        .map_err(|e| StoreError::Io(format!("cannot encode snapshot: {e}")))?;
    let mut f = File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
    f.write_all(&bytes)
        .map_err(|e| io_err("cannot write", &tmp, e))?;
    f.sync_all().map_err(|e| io_err("cannot sync", &tmp, e))?;
    fs::rename(&tmp, &dst).map_err(|e| io_err("cannot rename onto", &dst, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync directory", dir, e))
}

fn writer(
    mut files: Files,
    rx: mpsc::Receiver<Op>,
    views: Arc<Mutex<HashMap<String, Durable>>>,
    healthy: Arc<AtomicBool>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        buf.clear();
        let mut records = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        let mut close = None;
        for op in batch {
            match op {
                Op::Write(record, done) => {
                    if serde_json::to_writer(&mut buf, &record).is_ok() {
                        buf.push(b'\n');
                        records.push(record);
                        waiters.push(done);
                    } else {
                        let _ = done.send(Err(StoreError::Io("cannot encode record".into())));
                    }
                }
                Op::Close(done) => close = Some(done),
            }
        }
        let result = if buf.is_empty() {
            Ok(())
        } else {
            let appended = files
                .journal
                .write_all(&buf)
                .and_then(|_| files.journal.sync_data());
            if appended.is_err() {
                // Cut off a partial append so the next batch starts on a clean line.
                let _ = files.journal.set_len(files.journal_len);
                let _ = files.journal.seek(SeekFrom::Start(files.journal_len));
            }
            appended.map_err(|e| StoreError::Io(format!("journal append failed: {e}")))
        };
        match &result {
            Ok(()) => {
                files.journal_len += buf.len() as u64;
                if let Ok(mut v) = views.lock() {
                    for r in &records {
                        r.apply(v.entry(r.room().to_string()).or_default());
                    }
                }
                healthy.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "state journal write failed");
                healthy.store(false, Ordering::Relaxed);
            }
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
        if files.journal_len > files.compact_after || close.is_some() {
            let compacted = compact(&mut files, &views);
            if let Err(e) = &compacted {
                tracing::error!(error = %e, "state compaction failed");
            }
            if let Some(done) = close {
                // Release the directory lock before saying we are closed, so
                // a process started right after shutdown can take it.
                drop(files);
                let _ = done.send(compacted);
                return;
            }
        }
    }
}

fn compact(files: &mut Files, views: &Mutex<HashMap<String, Durable>>) -> Result<(), StoreError> {
    let snapshot = views.lock().map_err(|_| StoreError::Closed)?.clone();
    write_snapshot(&files.dir, &snapshot)?;
    files
        .journal
        .set_len(0)
        // Truncating does not move the write position: without the seek the
        // next append would land at the old offset behind a run of zeros.
        .and_then(|_| files.journal.seek(SeekFrom::Start(0)).map(|_| ()))
        .and_then(|_| files.journal.sync_all())
        .map_err(|e| StoreError::Io(format!("cannot truncate the journal: {e}")))?;
    files.journal_len = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(upto: u64) -> Record {
        Record::Reserve {
            room: "r".into(),
            epoch: 5,
            upto,
        }
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.write(Record::Epoch {
                room: "r".into(),
                epoch: 5,
            })
            .await
            .unwrap();
            s.write(reserve(1025)).await.unwrap();
            s.write(Record::Claim {
                room: "r".into(),
                epoch: 5,
                seq: 3,
            })
            .await
            .unwrap();
            // No close: as after kill -9.
        }
        let s = EmbeddedStore::open(dir.path());
        // The old writer thread may still hold the lock briefly.
        let s = match s {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(std::time::Duration::from_millis(200));
                EmbeddedStore::open(dir.path()).unwrap()
            }
        };
        let d = s.load("r").await.unwrap().unwrap();
        assert_eq!(d.epoch, 5);
        assert_eq!(d.reserved_upto, 1025);
        assert!(d.claimed.get(3));
        assert_eq!(s.load("other").await.unwrap(), None);
    }

    /// Regression: after a compaction while running, appends must start at
    /// the beginning of the emptied journal, or the next reopen finds zeros.
    #[tokio::test]
    async fn records_written_after_a_running_compaction_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open_with_compaction(dir.path(), 300).unwrap();
            s.write(Record::Epoch {
                room: "r".into(),
                epoch: 5,
            })
            .await
            .unwrap();
            for upto in 1..20 {
                s.write(reserve(upto * 10)).await.unwrap();
            }
            s.write(Record::Claim {
                room: "r".into(),
                epoch: 5,
                seq: 7,
            })
            .await
            .unwrap();
            s.write(Record::Claim {
                room: "r".into(),
                epoch: 5,
                seq: 9,
            })
            .await
            .unwrap();
            // No close: as after kill -9.
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let views = load_views(dir.path()).unwrap();
        let d = &views["r"];
        assert_eq!(d.reserved_upto, 190);
        assert!(d.claimed.get(7) && d.claimed.get(9));
    }

    #[test]
    fn torn_last_line_is_ignored_but_corrupt_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&reserve(10)).unwrap();
        fs::write(
            dir.path().join("journal.jsonl"),
            format!(
                "{}\n{}\n{{\"t\":\"res",
                serde_json::to_string(&Record::Epoch {
                    room: "r".into(),
                    epoch: 5
                })
                .unwrap(),
                good
            ),
        )
        .unwrap();
        let views = load_views(dir.path()).unwrap();
        assert_eq!(views["r"].reserved_upto, 10);

        fs::write(
            dir.path().join("journal.jsonl"),
            format!("garbage\n{good}\n"),
        )
        .unwrap();
        assert!(matches!(
            load_views(dir.path()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn second_process_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path()).unwrap();
        let err = EmbeddedStore::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[tokio::test]
    async fn close_compacts_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        s.write(Record::Epoch {
            room: "r".into(),
            epoch: 5,
        })
        .await
        .unwrap();
        s.write(reserve(2049)).await.unwrap();
        s.close().await.unwrap();
        assert_eq!(
            fs::metadata(dir.path().join("journal.jsonl"))
                .unwrap()
                .len(),
            0
        );
        assert!(matches!(s.write(reserve(1)).await, Err(StoreError::Closed)));
        let views = load_views(dir.path()).unwrap();
        assert_eq!(views["r"].reserved_upto, 2049);
    }
}
