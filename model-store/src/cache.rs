//! The on-disk cache: `<dir>/<name>-<key>.gguf` plus `<…>.gguf.json`, the sidecar that marks
//! the file as verified. The sidecar is written (temporary name, fsync, rename) only after the
//! model file has been renamed into place, so a file without a valid sidecar is never trusted.

use crate::StoreError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

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
    pub fn new(dir: &Path, file_name: &str, redacted_uri: &str) -> Self {
        let key = crate::hex(&Sha256::digest(redacted_uri.as_bytes())[..8]);
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

    /// A temporary name unique to this process and attempt.
    pub fn temp(&self, what: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.dir.join(format!(
            ".{}.{}.{nanos:x}.{what}",
            self.stem,
            std::process::id()
        ))
    }

    pub fn read_sidecar(&self) -> Option<Sidecar> {
        let bytes = fs::read(self.sidecar()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Removes the sidecar first (so nothing looks valid), then the file.
    pub fn remove(&self) {
        let _ = fs::remove_file(self.sidecar());
        let _ = fs::remove_file(self.file());
    }

    /// Deletes temporary files of this entry left by processes that no longer exist (a
    /// function killed mid-download leaves its `.part` file in /tmp).
    pub fn remove_orphans(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!(".{}.", self.stem);
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let pid: Option<u32> = rest.split('.').next().and_then(|p| p.parse().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                tracing::info!(file = %ent.path().display(), "removing a partial download left by an ended process");
                let _ = fs::remove_file(ent.path());
            }
        }
    }

    /// Writes the sidecar atomically and syncs the directory.
    pub fn write_sidecar(&self, sc: &Sidecar) -> Result<(), StoreError> {
        let tmp = self.temp("json");
        let res = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(sc).map_err(std::io::Error::other)?)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, self.sidecar())?;
            sync_dir(&self.dir)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write sidecar", &self.sidecar(), e));
        }
        Ok(())
    }
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
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
        assert!(
            e.temp("part")
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!(".{}.", e.stem))
        );
    }
}
