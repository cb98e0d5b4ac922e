//! Example origin plugin: the regular files of a tar archive (ustar, and GNU tar's long
//! names) served as an origin, `plugin://tar//path/to/archive.tar`. The archive is indexed
//! once at open (one 512-byte header per member); reads go straight to the member's bytes
//! in the archive. An archive rewritten in place is a new index only after a reopen (the
//! change token of a file is the archive's size and mtime with the member's offset).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use musicfs_plugin_api::{export_plugin, EntryInfo, Origin, OriginError};

/// One member.
#[derive(Debug, Clone)]
struct Member {
    /// Where its bytes start in the archive.
    offset: u64,
    size: u64,
    mtime_ns: i64,
}

/// An indexed archive.
pub struct Tar {
    file: File,
    files: BTreeMap<String, Member>,
    dirs: BTreeSet<String>,
    /// The archive's identity, part of every change token.
    stamp: String,
}

fn octal(field: &[u8]) -> Option<u64> {
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The archive's members, by path.
fn index(file: &File, len: u64) -> Result<BTreeMap<String, Member>, String> {
    let mut files = BTreeMap::new();
    let mut at = 0u64;
    let mut long_name: Option<String> = None;
    let mut header = [0u8; 512];
    while at + 512 <= len {
        file.read_exact_at(&mut header, at)
            .map_err(|e| format!("reading the archive at {at}: {e}"))?;
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let size = octal(&header[124..136]).ok_or("a member's size is not octal")?;
        let mtime = octal(&header[136..148]).unwrap_or(0);
        let kind = header[156];
        let data = at + 512;
        let mut name = text(&header[0..100]);
        if &header[257..262] == b"ustar" {
            let prefix = text(&header[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        if let Some(long) = long_name.take() {
            name = long;
        }
        match kind {
            b'L' => {
                // GNU long name: the next member's name is this member's data.
                let mut buf = vec![0u8; size.min(1 << 16) as usize];
                file.read_exact_at(&mut buf, data)
                    .map_err(|e| format!("reading a long name: {e}"))?;
                long_name = Some(text(&buf));
            }
            b'0' | 0 => {
                let path = name
                    .trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_string();
                if !path.is_empty() && !path.split('/').any(|p| p == "..") {
                    files.insert(
                        path,
                        Member {
                            offset: data,
                            size,
                            mtime_ns: (mtime as i64).saturating_mul(1_000_000_000),
                        },
                    );
                }
            }
            _ => {}
        }
        at = data + size.div_ceil(512) * 512;
    }
    Ok(files)
}

impl Tar {
    fn entry(&self, name: &str, path: &str) -> Option<EntryInfo> {
        if let Some(m) = self.files.get(path) {
            return Some(EntryInfo {
                name: name.to_string(),
                is_dir: false,
                size: m.size,
                mtime_ns: m.mtime_ns,
                token: format!("{}:{}", self.stamp, m.offset),
            });
        }
        (path.is_empty() || self.dirs.contains(path)).then(|| EntryInfo {
            name: name.to_string(),
            is_dir: true,
            size: 0,
            mtime_ns: 0,
            token: self.stamp.clone(),
        })
    }
}

impl Origin for Tar {
    fn open(root: &str) -> Result<Tar, String> {
        let file = File::open(root).map_err(|e| format!("{root}: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("{root}: {e}"))?;
        let files = index(&file, meta.len())?;
        let mut dirs = BTreeSet::new();
        for path in files.keys() {
            let mut at = path.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                dirs.insert(parent.to_string());
                at = parent;
            }
        }
        Ok(Tar {
            file,
            files,
            dirs,
            stamp: format!("{}-{}", meta.len(), meta.mtime()),
        })
    }

    fn list(&self, dir: &str) -> Result<Vec<EntryInfo>, OriginError> {
        let dir = dir.trim_matches('/');
        if !dir.is_empty() && !self.dirs.contains(dir) {
            return Err(OriginError::NotFound);
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut names = BTreeSet::new();
        for path in self.files.keys().chain(self.dirs.iter()) {
            if let Some(rest) = path.strip_prefix(&prefix) {
                if !rest.is_empty() {
                    names.insert(rest.split('/').next().unwrap_or(rest).to_string());
                }
            }
        }
        Ok(names
            .iter()
            .filter_map(|n| self.entry(n, &format!("{prefix}{n}")))
            .collect())
    }

    fn stat(&self, path: &str) -> Result<EntryInfo, OriginError> {
        let path = path.trim_matches('/');
        self.entry(path, path).ok_or(OriginError::NotFound)
    }

    fn read(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize, OriginError> {
        let m = self
            .files
            .get(path.trim_matches('/'))
            .ok_or(OriginError::NotFound)?;
        if offset >= m.size {
            return Ok(0);
        }
        let n = (m.size - offset).min(buf.len() as u64) as usize;
        self.file
            .read_exact_at(&mut buf[..n], m.offset + offset)
            .map_err(|e| OriginError::Failed(e.to_string()))?;
        Ok(n)
    }
}

export_plugin!(name = "tar", version = "1.0.0", origin = Tar);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields_parse_and_bad_ones_are_refused() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"       \0"), Some(0));
        assert_eq!(octal(b"12x\0"), None);
    }
}
