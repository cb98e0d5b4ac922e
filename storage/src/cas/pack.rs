//! Pack files: chunk bytes appended to `packs/NNNNNNNN.pack`, read back by offset.
//!
//! Packs are only ever appended to, truncated back to their committed length (a torn
//! append), hole-punched where evicted chunks were, or deleted when nothing in them lives.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use super::reader;
use super::CasError;

/// The directory of pack files and the read handles open on them.
pub(crate) struct Packs {
    dir: PathBuf,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    uring: bool,
}

impl Packs {
    pub(crate) fn open(dir: PathBuf, uring: bool) -> Result<Packs, CasError> {
        std::fs::create_dir_all(&dir).map_err(|source| CasError::Io {
            path: dir.clone(),
            op: "create the pack directory",
            source,
        })?;
        Ok(Packs {
            dir,
            readers: RwLock::new(HashMap::new()),
            uring,
        })
    }

    pub(crate) fn path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08}.pack"))
    }

    fn io(&self, path: &Path, op: &'static str, source: io::Error) -> CasError {
        CasError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// Every pack file present, with its length. Names that are not packs are ignored.
    pub(crate) fn list(&self) -> Result<Vec<(u32, u64)>, CasError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| self.io(&self.dir, "list packs", e))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| self.io(&self.dir, "list packs", e))?;
            let name = ent.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .filter(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let len = ent
                .metadata()
                .map_err(|e| self.io(&ent.path(), "stat a pack", e))?
                .len();
            out.push((id, len));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Opens pack `id` for appending, creating it empty when `create` (a pack the index
    /// does not know yet: any old file of that name is a leftover and is emptied). The new
    /// name is made durable before any chunk in it is committed.
    pub(crate) fn open_for_append(&self, id: u32, create: bool) -> Result<File, CasError> {
        let path = self.path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(&path)
            .map_err(|e| self.io(&path, "open a pack for writing", e))?;
        if create {
            self.sync_dir()?;
        }
        Ok(file)
    }

    pub(crate) fn write_at(
        &self,
        id: u32,
        file: &File,
        bytes: &[u8],
        at: u64,
    ) -> Result<(), CasError> {
        file.write_all_at(bytes, at)
            .map_err(|e| self.io(&self.path(id), "append to a pack", e))
    }

    pub(crate) fn sync(&self, id: u32, file: &File) -> Result<(), CasError> {
        file.sync_data()
            .map_err(|e| self.io(&self.path(id), "sync a pack", e))
    }

    fn sync_dir(&self) -> Result<(), CasError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(&self.dir, "sync the pack directory", e))
    }

    /// Cuts pack `id` back to `len` bytes (what the index committed) and makes that
    /// durable. Returns whether anything was cut.
    pub(crate) fn trim(&self, id: u32, len: u64) -> Result<bool, CasError> {
        let path = self.path(id);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| self.io(&path, "open a pack to trim it", e))?;
        let actual = file
            .metadata()
            .map_err(|e| self.io(&path, "stat a pack", e))?
            .len();
        if actual <= len {
            return Ok(false);
        }
        file.set_len(len)
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(&path, "trim a pack's torn tail", e))?;
        Ok(true)
    }

    /// Removes pack `id` (nothing in it lives, or the index never knew it).
    pub(crate) fn delete(&self, id: u32) -> Result<(), CasError> {
        self.readers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&path, "delete a pack", e)),
        }
    }

    /// Gives the disk blocks of `len` bytes at `offset` back (the bytes read as zeros).
    /// Best effort: a file system without hole punching keeps the space until the pack
    /// empties and is deleted.
    ///
    /// Chunks are not block-aligned, so a block the range only partly covers would stay
    /// allocated even once every chunk in it is gone (small tag-region chunks would keep
    /// most of a pack's blocks so: the remote soak saw 309 MiB on disk for a 64 MiB
    /// budget). Such an edge block is punched whole when the rest of it reads as zeros:
    /// a hole reads as zeros too, so no reader can tell, whether those bytes were punched
    /// before or are zeros of a live chunk. Called with the writer held (no append runs),
    /// and only for blocks the file already holds whole.
    pub(crate) fn punch(&self, id: u32, offset: u64, len: u64) {
        let path = self.path(id);
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else {
            return;
        };
        let (offset, len) = widen_to_zero_blocks(&file, offset, len);
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return;
        };
        // SAFETY: fallocate on an fd we own, with plain integer arguments; no memory is
        // handed to the kernel.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc != 0 {
            tracing::debug!(pack = %path.display(), error = %io::Error::last_os_error(), "hole punching failed");
        }
    }

    /// Bytes of pack `id` on disk (allocated blocks), for statistics.
    pub(crate) fn allocated(&self, id: u32) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.path(id)).map_or(0, |m| m.blocks() * 512)
    }

    fn reader(&self, id: u32) -> io::Result<Arc<File>> {
        if let Some(f) = self
            .readers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            return Ok(Arc::clone(f));
        }
        let file = Arc::new(File::open(self.path(id))?);
        self.readers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&file));
        Ok(file)
    }

    /// Reads exactly `len` bytes at `offset` of pack `id` into `buf` (resized to `len`).
    pub(crate) fn read(
        &self,
        id: u32,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let file = self.reader(id)?;
        buf.resize(len, 0);
        if self.uring {
            if let Some(done) = reader::read_exact_at(file.as_raw_fd(), buf, offset) {
                return done;
            }
        }
        file.read_exact_at(buf, offset)
    }
}

/// The block size edge blocks are widened to (the common file-system block).
const BLOCK: u64 = 4096;

/// `offset..offset + len` widened outward to whole blocks where the rest of an edge block
/// reads as zeros (see [`Packs::punch`]); unchanged where it does not, or cannot be read.
fn widen_to_zero_blocks(file: &File, offset: u64, len: u64) -> (u64, u64) {
    let zeros = |from: u64, to: u64| {
        let mut buf = vec![0u8; (to - from) as usize];
        file.read_exact_at(&mut buf, from).is_ok() && buf.iter().all(|&b| b == 0)
    };
    let Some(end) = offset.checked_add(len) else {
        return (offset, len);
    };
    let file_len = file.metadata().map_or(0, |m| m.len());
    let head = offset - offset % BLOCK;
    let start = if head < offset && zeros(head, offset) {
        head
    } else {
        offset
    };
    let tail = end.div_ceil(BLOCK) * BLOCK;
    let end = if tail > end && tail <= file_len && zeros(end, tail) {
        tail
    } else {
        end
    };
    (start, end - start)
}

#[cfg(test)]
mod widen_tests {
    use super::*;

    #[test]
    fn an_edge_block_is_widened_to_only_when_the_rest_of_it_reads_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        // Chunks A 0..3000, B 3000..6000, C 6000..12288, all non-zero.
        std::fs::write(&path, vec![7u8; 12288]).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // B freed first: A and C still hold the edge blocks' other bytes.
        assert_eq!(widen_to_zero_blocks(&file, 3000, 3000), (3000, 3000));
        // A gone (its bytes read as zeros): B's head edge widens to the block start.
        file.write_all_at(&[0u8; 3000], 0).unwrap();
        assert_eq!(widen_to_zero_blocks(&file, 3000, 3000), (0, 6000));
        // C freed once B's bytes read as zeros: its head edge widens; the tail is the file's
        // end, already a block boundary.
        file.write_all_at(&[0u8; 3000], 3000).unwrap();
        assert_eq!(widen_to_zero_blocks(&file, 6000, 6288), (4096, 8192));
        // Never past the end of the file, nor for a range that overflows.
        assert_eq!(widen_to_zero_blocks(&file, 12000, 200), (12000, 200));
        assert_eq!(
            widen_to_zero_blocks(&file, u64::MAX - 1, 10),
            (u64::MAX - 1, 10)
        );
    }
}
