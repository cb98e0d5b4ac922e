//! Cover art stored once by content: each distinct picture a scan finds embedded in a
//! track is written to the state directory under its xxh3-128 (`art/ab/abcd….jpg`), however
//! many tracks carry it; the catalog records which track has which ([`ArtRef`]). Smaller
//! renditions made from a picture live beside it (`….600.jpg`).
//!
//! Files are written whole to a temporary name and renamed, so a reader never sees a
//! partial picture and a crash leaves at most a stray temporary file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_128;

use crate::catalog::ArtRef;

/// The pictures of one state directory.
#[derive(Debug, Clone)]
pub struct ArtStore {
    dir: PathBuf,
}

impl ArtStore {
    /// The store in `dir` (created on the first write).
    pub fn new(dir: &Path) -> ArtStore {
        ArtStore {
            dir: dir.to_path_buf(),
        }
    }

    /// Stores `data` (a PNG when `png`) unless a picture with the same bytes is stored
    /// already; returns its reference.
    pub fn put(&self, data: &[u8], png: bool) -> io::Result<ArtRef> {
        let art = ArtRef {
            hash: xxh3_128(data),
            png,
        };
        let path = self.path(art);
        if !path.exists() {
            write_atomically(&path, data)?;
        }
        Ok(art)
    }

    /// Where picture `art` is stored.
    pub fn path(&self, art: ArtRef) -> PathBuf {
        let ext = if art.png { "png" } else { "jpg" };
        self.file(art, ext)
    }

    /// Where the JPEG rendition of `art` that fits in `px` × `px` is kept.
    pub fn rendition_path(&self, art: ArtRef, px: u32) -> PathBuf {
        self.file(art, &format!("{px}.jpg"))
    }

    fn file(&self, art: ArtRef, ext: &str) -> PathBuf {
        let hex = format!("{:032x}", art.hash);
        self.dir.join(&hex[..2]).join(format!("{hex}.{ext}"))
    }
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picture_is_stored_once_under_its_content_hash() {
        let t = tempfile::tempdir().unwrap();
        let store = ArtStore::new(t.path());
        let a = store.put(b"jpeg bytes", false).unwrap();
        let b = store.put(b"jpeg bytes", false).unwrap();
        assert_eq!(a, b);
        assert_eq!(std::fs::read(store.path(a)).unwrap(), b"jpeg bytes");
        let p = store.put(b"png bytes", true).unwrap();
        assert!(store.path(p).to_string_lossy().ends_with(".png"));
        assert!(store
            .rendition_path(a, 600)
            .to_string_lossy()
            .ends_with(".600.jpg"));
        let files = walk(t.path());
        assert_eq!(files, 2, "no temporary file left: {files}");
    }

    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }
}
