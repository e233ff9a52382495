//! The on-disk cache: `<dir>/<name>-<key>.gguf` plus `<…>.gguf.json`, the sidecar that marks
//! the file as verified. The sidecar is written (temporary name, fsync, rename) only after the
//! model file has been renamed into place, so a file without a valid sidecar is never trusted.
//!
//! Invariants:
//! - The directory is created private (0700). A directory owned by another user or writable by
//!   group or others is never used: whoever can write into it could plant a model.
//! - An entry (model file or sidecar) is used only when it is a regular file (not a symbolic
//!   link), owned by this process's effective user and not writable by group or others; these
//!   checks are made on the opened file (`fstat`), not on the name. An entry that fails them is
//!   removed and downloaded again.
//! - Every look-up, download and publish of an entry happens under an exclusive `flock` on
//!   `.<stem>.lock` ([`EntryLock`]), so processes sharing the directory (one volume, several
//!   containers, all PID 1) neither duplicate nor delete each other's downloads: a second
//!   process waits for the lock and then finds the completed entry. Temporaries of an entry
//!   (`.<stem>.part`, `.<stem>.json.part`) are only ever written under its lock, so any found by
//!   the lock holder are stale and are removed.

use crate::StoreError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a process waiting for another's lock tries again.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Largest sidecar JSON read (a real one is ~300 bytes).
const SIDECAR_MAX: u64 = 64 * 1024;

/// What the sidecar JSON records about a verified file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    pub size: u64,
    pub etag: Option<String>,
    pub sha256: String,
    /// The source URI, redacted.
    pub source: String,
    /// Unix seconds when the file was published.
    pub created: u64,
}

/// Paths of one cache entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub dir: PathBuf,
    /// `<name>-<key>` without extension decoration.
    pub stem: String,
}

impl Entry {
    /// `identity` is [`crate::uri::cache_identity`] of the URI: the redacted URI plus the query
    /// parameters that select content (a Hugging Face revision, a blob snapshot).
    pub fn new(dir: &Path, file_name: &str, identity: &str) -> Self {
        let key = crate::hex(&Sha256::digest(identity.as_bytes())[..8]);
        let (base, ext) = match file_name.rsplit_once('.') {
            Some((b, e)) if !b.is_empty() => (b, format!(".{e}")),
            _ => (file_name, String::new()),
        };
        Entry {
            dir: dir.to_path_buf(),
            stem: format!("{base}-{key}{ext}"),
        }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(&self.stem)
    }

    pub fn sidecar(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem))
    }

    /// The download in progress (written only under the entry's lock).
    pub fn part(&self) -> PathBuf {
        self.dir.join(format!(".{}.part", self.stem))
    }

    fn sidecar_part(&self) -> PathBuf {
        self.dir.join(format!(".{}.json.part", self.stem))
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(format!(".{}.lock", self.stem))
    }

    /// The sidecar, opened without following a symbolic link and checked like the model file.
    /// `Ok(None)`: there is none (or it is not valid JSON, i.e. an interrupted write).
    /// `Err`: it exists but must not be trusted (owner, mode, type).
    pub fn read_sidecar(&self) -> Result<Option<Sidecar>, String> {
        let path = self.sidecar();
        let mut file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("sidecar {}: {e}", path.display())),
        };
        check_private_file(&file, &path)?;
        let mut bytes = Vec::new();
        std::io::Read::by_ref(&mut file)
            .take(SIDECAR_MAX)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// The model file, opened without following a symbolic link and checked (regular file,
    /// this user's, not writable by group or others).
    pub fn open_file(&self) -> Result<fs::File, String> {
        let path = self.file();
        let file = open_nofollow(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        check_private_file(&file, &path)?;
        Ok(file)
    }

    /// Removes the sidecar first (so nothing looks valid), then the file.
    pub fn remove(&self) {
        let _ = fs::remove_file(self.sidecar());
        let _ = fs::remove_file(self.file());
    }

    /// Deletes this entry's temporaries: partial downloads and sidecars of a process that
    /// died or was killed (including the `.<stem>.<pid>.<nanos>.*` names of earlier versions).
    /// Only called by the lock holder, so nothing found here is in use.
    pub fn remove_stale_temps(&self, _lock: &EntryLock) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!(".{}.", self.stem);
        let lock_name = format!(".{}.lock", self.stem);
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) || name == lock_name {
                continue;
            }
            tracing::info!(file = %ent.path().display(), "removing a partial download no process is writing (its lock is free)");
            let _ = fs::remove_file(ent.path());
        }
    }

    /// Writes the sidecar atomically (private file, rename); with `fsync`, syncs the file
    /// before the rename and the directory after it.
    pub fn write_sidecar(&self, sc: &Sidecar, fsync: bool) -> Result<(), StoreError> {
        let tmp = self.sidecar_part();
        let res = (|| {
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(sc).map_err(std::io::Error::other)?)?;
            f.write_all(b"\n")?;
            if fsync {
                f.sync_all()?;
            }
            fs::rename(&tmp, self.sidecar())?;
            if fsync { sync_dir(&self.dir) } else { Ok(()) }
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write sidecar", &self.sidecar(), e));
        }
        Ok(())
    }
}

/// What this process may do with the disk cache for one entry.
#[derive(Debug)]
pub(crate) enum CacheAccess {
    /// The entry's lock is held: look up, download, publish.
    Locked(EntryLock),
    /// A read-only directory (a cache baked into an image): look up only; nobody can change it.
    ReadOnly(StoreError),
    /// Not usable (unsafe or broken directory, no lock possible), and why.
    Unusable(StoreError),
}

/// Why the cache directory cannot be used.
#[derive(Debug)]
pub(crate) enum DirProblem {
    /// It could not be created or examined.
    Io(&'static str, std::io::Error),
    /// It exists but is not private to this user.
    Unsafe(String),
}

impl DirProblem {
    pub fn into_error(self, dir: &Path) -> StoreError {
        match self {
            DirProblem::Io(op, e) => StoreError::io(op, dir, e),
            DirProblem::Unsafe(reason) => StoreError::UnsafeCache {
                path: dir.display().to_string(),
                reason,
            },
        }
    }
}

impl std::fmt::Display for DirProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirProblem::Io(op, e) => write!(f, "{op}: {e}"),
            DirProblem::Unsafe(reason) => f.write_str(reason),
        }
    }
}

/// Creates the cache directory private to this user (0700, parents included) when it is
/// missing, then checks that it is this user's and not writable by group or others.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), DirProblem> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(DirProblem::Io("create cache directory", e)),
    }
    // Follows a symbolic link: what matters is who controls the directory written into.
    let meta = fs::metadata(dir).map_err(|e| DirProblem::Io("stat cache directory", e))?;
    if !meta.is_dir() {
        return Err(DirProblem::Unsafe("not a directory".into()));
    }
    check_owner_and_mode(&meta).map_err(DirProblem::Unsafe)
}

/// This user's and not writable by group or others, or why not.
fn check_owner_and_mode(meta: &fs::Metadata) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not by this user (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {mode:04o}); it must be private to this user (chmod 700)"
        ));
    }
    Ok(())
}

fn check_private_file(file: &fs::File, path: &Path) -> Result<(), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    check_owner_and_mode(&meta).map_err(|why| format!("{}: {why}", path.display()))
}

/// Opens read-only, refusing a symbolic link as the last component.
fn open_nofollow(path: &Path) -> std::io::Result<fs::File> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(fs::File::from(fd))
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Why an entry's lock was not taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// The lock file could not be created or locked (read-only or odd file system).
    Io(std::io::Error),
    /// Another process held it for the whole wait.
    Timeout(Duration),
}

/// An exclusive `flock` on `.<stem>.lock`, held while an entry is looked up, downloaded and
/// published. Dropping it deletes the lock file and then releases the lock.
///
/// Deleting a lock file is safe with this protocol: a process that acquired the lock checks
/// that the name still refers to the file it locked, and starts over when it does not (the
/// holder deleted it meanwhile), so two processes never both believe they hold the lock.
/// `flock` locks belong to the open file description, so two stores in one process exclude
/// each other too; the kernel drops the lock of a process that dies.
#[derive(Debug)]
pub(crate) struct EntryLock {
    /// Holds the lock; closing it (when the lock is dropped) releases it.
    _file: fs::File,
    path: PathBuf,
}

impl EntryLock {
    /// Waits (polling every 50 ms, without blocking a runtime thread) up to `wait` for the
    /// lock. `on_wait` runs once, when the lock is found taken.
    pub async fn acquire(
        path: &Path,
        wait: Duration,
        mut on_wait: impl FnMut(),
    ) -> Result<Self, LockError> {
        let started = tokio::time::Instant::now();
        let mut waited = false;
        loop {
            let fd = rustix::fs::open(
                path,
                rustix::fs::OFlags::RDWR
                    | rustix::fs::OFlags::CREATE
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::from_raw_mode(0o600),
            )
            .map_err(|e| LockError::Io(e.into()))?;
            let file = fs::File::from(fd);
            loop {
                match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                {
                    Ok(()) => break,
                    Err(rustix::io::Errno::WOULDBLOCK) => {
                        if !waited {
                            waited = true;
                            on_wait();
                        }
                        if started.elapsed() >= wait {
                            return Err(LockError::Timeout(wait));
                        }
                        tokio::time::sleep(LOCK_POLL).await;
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(LockError::Io(e.into())),
                }
            }
            // Locked; is it still the file that the name refers to?
            let mine = file.metadata().map_err(LockError::Io)?;
            match fs::symlink_metadata(path) {
                Ok(now) if now.dev() == mine.dev() && now.ino() == mine.ino() => {
                    return Ok(EntryLock {
                        _file: file,
                        path: path.to_path_buf(),
                    });
                }
                // Deleted (or replaced) by the previous holder: take the new one.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LockError::Io(e)),
            }
        }
    }
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        // Delete while still holding the lock (see the type's comment); `self._file` is
        // closed after this body runs, which releases the lock.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let e = Entry::new(Path::new("/c"), "m.gguf", "s3://b/m.gguf");
        assert!(
            e.stem.starts_with("m-") && e.stem.ends_with(".gguf"),
            "{}",
            e.stem
        );
        assert_eq!(e.sidecar(), PathBuf::from(format!("/c/{}.json", e.stem)));
        let other = Entry::new(Path::new("/c"), "m.gguf", "s3://b2/m.gguf");
        assert_ne!(e.stem, other.stem);
        for temp in [e.part(), e.sidecar_part(), e.lock_path()] {
            assert!(
                temp.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!(".{}.", e.stem)),
                "{}",
                temp.display()
            );
        }
        // Content selectors in the query make different entries.
        let a = Entry::new(
            Path::new("/c"),
            "m.gguf",
            &crate::uri::cache_identity("hf://o/r/m.gguf?revision=A"),
        );
        let b = Entry::new(
            Path::new("/c"),
            "m.gguf",
            &crate::uri::cache_identity("hf://o/r/m.gguf?revision=B"),
        );
        assert_ne!(a.stem, b.stem);
    }
}
