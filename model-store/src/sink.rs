//! Where downloaded bytes land: a pre-sized temporary file in the cache directory (written with
//! `pwrite`, read back through a read-only mapping for hashing) or an anonymous memory mapping
//! (filled with `memcpy`, sealed read-only at the end). Either way the mapping the bytes were
//! hashed through is the one published: its page tables are already filled, so the first
//! forward pass takes no page faults on a freshly downloaded model.

use crate::StoreError;
use bytes::Bytes;
use memmap2::{Mmap, MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A published model: its mapping, and for a disk copy the open file.
pub(crate) struct Published {
    pub map: Mmap,
    pub file: Option<Arc<File>>,
}

pub(crate) struct Sink {
    /// Base of the mapping that holds (memory) or mirrors (disk) the object's bytes.
    ptr: *mut u8,
    len: usize,
    kind: Kind,
}

enum Kind {
    Disk {
        file: Arc<File>,
        tmp: PathBuf,
        /// Keeps `ptr` valid: the hasher reads the written bytes through it, and it is
        /// what `publish` returns. Never written through.
        map: Mmap,
        published: Mutex<bool>,
    },
    Memory {
        map: MmapMut,
    },
}

// SAFETY: `ptr` points into a mapping owned by the sink, which lives as long as the sink. The
// download writes each byte range from exactly one task (parts are disjoint), and the hasher
// reads only ranges whose writes have completed, which the part tracker's mutex orders before
// the read. The file handle is thread-safe.
unsafe impl Send for Sink {}
// SAFETY: see `Send`; shared access never produces overlapping writes or racing reads.
unsafe impl Sync for Sink {}

impl Sink {
    /// A pre-sized temporary file next to where the model will be published.
    pub fn disk(tmp: PathBuf, size: u64) -> Result<Self, StoreError> {
        // Private to this user whatever the umask: the cache accepts only files that are not
        // writable by group or others.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| StoreError::io("create", &tmp, e))?;
        let cleanup = |e: std::io::Error, op: &'static str| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::io(op, &tmp, e)
        };
        file.set_len(size).map_err(|e| cleanup(e, "size"))?;
        // Reserve the blocks now so running out of space shows up here, not as a failed write
        // halfway through. Not every file system supports it; that is fine.
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOSPC) => {
                return Err(cleanup(
                    std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
                    "reserve space for",
                ));
            }
            Err(_) => {}
        }
        // SAFETY: the file was created here (create_new, private to this user) and is written
        // only by this sink's parts, each byte range once, before the hasher reads it (see
        // `completed`); after publishing it is only ever replaced by rename, never written in
        // place, so the mapping's contents do not change under the reader.
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(|e| cleanup(e, "map"))?;
        Ok(Sink {
            // Read through only (`completed`); the disk sink writes with pwrite.
            ptr: map.as_ptr().cast_mut(),
            len: size as usize,
            kind: Kind::Disk {
                file: Arc::new(file),
                tmp,
                map,
                published: Mutex::new(false),
            },
        })
    }

    /// An anonymous mapping of `size` bytes.
    pub fn memory(size: u64) -> Result<Self, StoreError> {
        let mut map = MmapMut::map_anon(size as usize).map_err(|e| {
            StoreError::io(
                "map anonymous memory of",
                Path::new(&format!("{size} bytes")),
                e,
            )
        })?;
        Ok(Sink {
            ptr: map.as_mut_ptr(),
            len: size as usize,
            kind: Kind::Memory { map },
        })
    }

    pub fn is_disk(&self) -> bool {
        matches!(self.kind, Kind::Disk { .. })
    }

    /// Writes consecutive chunks starting at `offset`. Each range must be written by one task.
    pub async fn write_chunks(&self, offset: u64, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        let total: usize = chunks.iter().map(Bytes::len).sum();
        assert!(
            offset as usize + total <= self.len,
            "write past the end of the sink"
        );
        match &self.kind {
            Kind::Memory { .. } => {
                let mut off = offset as usize;
                for c in chunks {
                    // SAFETY: off + c.len() <= len (asserted above); the range belongs to the
                    // calling part only; source and destination do not overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(c.as_ptr(), self.ptr.add(off), c.len())
                    };
                    off += c.len();
                }
                Ok(())
            }
            Kind::Disk { file, tmp, .. } => {
                let file = Arc::clone(file);
                let res = tokio::task::spawn_blocking(move || {
                    let mut off = offset;
                    for c in chunks {
                        file.write_all_at(&c, off)?;
                        off += c.len() as u64;
                    }
                    Ok::<(), std::io::Error>(())
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?;
                res.map_err(|e| StoreError::io("write", tmp, e))
            }
        }
    }

    /// The bytes of a completed range.
    ///
    /// # Safety
    /// Every write to `offset..offset + len` must have completed and be ordered before this
    /// call (the part tracker guarantees it), and no write to the range may follow.
    pub unsafe fn completed(&self, offset: u64, len: usize) -> &[u8] {
        assert!(offset as usize + len <= self.len);
        // SAFETY: in bounds (asserted); the caller guarantees no concurrent writes.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset as usize), len) }
    }

    /// Disk: fsync first when `fsync` (file, then the directory after the rename), rename to
    /// `dest`; the mapping the bytes were hashed through comes back with the file, for a later
    /// fsync. Memory: seal the mapping read-only.
    pub fn publish(self, dest: Option<&Path>, fsync: bool) -> Result<Published, StoreError> {
        if let Kind::Disk {
            file,
            tmp,
            published,
            ..
        } = &self.kind
        {
            let dest = dest.expect("a disk sink is published to a path");
            if fsync {
                file.sync_all()
                    .map_err(|e| StoreError::io("fsync", tmp, e))?;
            }
            std::fs::rename(tmp, dest).map_err(|e| StoreError::io("rename", tmp, e))?;
            *published.lock().unwrap_or_else(|p| p.into_inner()) = true;
            if fsync && let Some(dir) = dest.parent() {
                crate::cache::sync_dir(dir).map_err(|e| StoreError::io("fsync", dir, e))?;
            }
        }
        match self.into_kind() {
            Kind::Memory { map } => Ok(Published {
                map: map
                    .make_read_only()
                    .map_err(|e| StoreError::io("seal", Path::new("anonymous model mapping"), e))?,
                file: None,
            }),
            // The rename kept the inode: this mapping is the published file's.
            Kind::Disk { map, file, .. } => Ok(Published {
                map,
                file: Some(file),
            }),
        }
    }

    fn into_kind(self) -> Kind {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again; the kind is moved out exactly once.
        unsafe { std::ptr::read(&this.kind) }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Kind::Disk { tmp, published, .. } = &self.kind
            && !*published.lock().unwrap_or_else(|p| p.into_inner())
        {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
