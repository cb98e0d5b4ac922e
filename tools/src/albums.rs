//! The daemon's [`AlbumExtras`]: what an album folder shows besides its tracks, from the
//! catalog (the extra files each origin folder holds, each track's embedded art) and the
//! art store.
//!
//! - **Sidecars follow their album.** The extra files of an origin folder appear in the
//!   album folder that most of that origin folder's tracks are in (ties: the one with the
//!   lowest inode), under their own names; a `.lrc` named like a track takes the track's
//!   name in the tree (`01 song.lrc` beside `01 song.flac` shown as `01 - Song.flac`
//!   becomes `01 - Song.lrc`).
//! - **`cover.jpg`** (`cover.png` for a PNG): the origin folder's own image
//!   (`cover`, `folder`, `front`, in that order; `.jpg`, `.jpeg`, `.png`) wins; else the
//!   embedded picture of the first track (in name order) that has one, as stored.
//! - **`cover-medium.jpg` and `cover-thumb.jpg`**: the cover scaled to fit 600 and 200
//!   pixels (never enlarged), JPEG, made the first time the album is listed or looked up
//!   and kept in the art store.
//!
//! A name a track already has, or an earlier entry took, is not shown twice.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use musicfs_core::meta::{OriginId, TrackId, COVER_NAMES};
use musicfs_core::snapshot::Snapshot;
use musicfs_core::tree::FILE_INO_BASE;
use musicfs_fusedev::album::{AlbumExtras, Extra, ExtraSource};
use musicfs_storage::catalog::{ArtRef, Catalog};
use musicfs_storage::origin::OriginTable;
use musicfs_storage::ArtStore;
use xxhash_rust::xxh3::xxh3_128;

/// The folder images that win over embedded art, best first (compared without case).
const FOLDER_ART: [&str; 3] = ["cover", "folder", "front"];
/// The renditions: name and the square they fit in, in pixels.
pub const RENDITIONS: [(&str, u32); 2] = [(COVER_NAMES[2], 600), (COVER_NAMES[3], 200)];
/// Largest cover (bytes) read to make renditions from.
const MAX_COVER_BYTES: u64 = 64 << 20;

/// An origin folder: (origin, path).
type Folder = (u32, Vec<u8>);

/// An origin file's version: (origin, path, size, mtime).
type FileVersion = (u32, Vec<u8>, u64, i64);

/// Album folders' extras of one library.
pub struct LibraryAlbums {
    catalog: Arc<Catalog>,
    art: ArtStore,
    origins: Arc<ArcSwap<OriginTable>>,
    /// Folder images already hashed, by version, to their content hash.
    hashed: Mutex<HashMap<FileVersion, u128>>,
    /// The album each origin folder's files go to, for the snapshot generation kept with
    /// them: every album of a folder asks, and a folder can hold a whole library.
    majority: Mutex<(u64, HashMap<Folder, Option<u64>>)>,
}

impl std::fmt::Debug for LibraryAlbums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibraryAlbums").finish_non_exhaustive()
    }
}

/// One of the album's tracks, as the tree shows it.
struct Shown {
    name: Vec<u8>,
    origin: u32,
    rel_path: Vec<u8>,
}

impl LibraryAlbums {
    /// Extras from `catalog`, with art from `art_dir`, reading origin files through
    /// `origins` (the table the mount reads tracks through).
    pub fn new(
        catalog: Arc<Catalog>,
        art_dir: &Path,
        origins: Arc<ArcSwap<OriginTable>>,
    ) -> LibraryAlbums {
        LibraryAlbums {
            catalog,
            art: ArtStore::new(art_dir),
            origins,
            hashed: Mutex::new(HashMap::new()),
            majority: Mutex::new((0, HashMap::new())),
        }
    }

    fn try_extras(&self, snap: &Snapshot, dir: u64) -> anyhow::Result<Vec<Extra>> {
        let tracks: Vec<Shown> = snap
            .children(dir, 0)
            .filter_map(|c| {
                let f = c.file()?;
                Some(Shown {
                    name: c.name().to_vec(),
                    origin: f.origin,
                    rel_path: f.rel_path.to_vec(),
                })
            })
            .collect();
        if tracks.is_empty() {
            return Ok(Vec::new());
        }
        let mut out: Vec<Extra> = Vec::new();
        let taken = |out: &[Extra], name: &[u8]| {
            snap.lookup(dir, name).is_some() || out.iter().any(|e| e.name == name)
        };
        // The origin folders the album's tracks come from, in the album's order.
        let mut folders: Vec<(u32, Vec<u8>)> = Vec::new();
        for t in &tracks {
            let folder = (t.origin, parent_of(&t.rel_path).to_vec());
            if !folders.contains(&folder) {
                folders.push(folder);
            }
        }
        let mut folder_art: Option<(usize, Extra)> = None;
        for (origin, folder) in &folders {
            if self.album_of(snap, *origin, folder)? != Some(dir) {
                continue;
            }
            for f in self.catalog.extras_in(OriginId(*origin), folder)? {
                let rel_path = join(folder, &f.name);
                let name = lyrics_name(&f.name, &tracks, *origin, folder).unwrap_or(f.name);
                let extra = Extra {
                    name,
                    size: f.size,
                    mtime_ns: f.mtime_ns,
                    source: ExtraSource::Origin {
                        origin: *origin,
                        rel_path,
                    },
                };
                if let Some(rank) = folder_art_rank(&extra.name) {
                    if folder_art.as_ref().is_none_or(|(r, _)| rank < *r) {
                        folder_art = Some((rank, extra.clone()));
                    }
                }
                if !taken(&out, &extra.name) {
                    out.push(extra);
                }
            }
        }
        let cover = match folder_art {
            Some((_, e)) => Some(e),
            None => self.embedded_cover(&tracks)?,
        };
        let Some(mut cover) = cover else {
            return Ok(out);
        };
        let png = cover.name.to_ascii_lowercase().ends_with(b".png");
        cover.name = if png {
            b"cover.png".to_vec()
        } else {
            b"cover.jpg".to_vec()
        };
        let renditions = self.renditions(&cover);
        // An origin file already shown under the cover's name is the cover itself.
        if !taken(&out, &cover.name) {
            out.push(cover);
        }
        for r in renditions {
            if !taken(&out, &r.name) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The tree directory most of the tracks of origin folder `folder` are in (ties: the
    /// lowest inode).
    fn album_of(&self, snap: &Snapshot, origin: u32, folder: &[u8]) -> anyhow::Result<Option<u64>> {
        let key = (origin, folder.to_vec());
        {
            let mut known = self.majority.lock().unwrap_or_else(|p| p.into_inner());
            if known.0 != snap.generation() {
                *known = (snap.generation(), HashMap::new());
            }
            if let Some(album) = known.1.get(&key) {
                return Ok(*album);
            }
        }
        let album = self.count_album_of(snap, origin, folder)?;
        let mut known = self.majority.lock().unwrap_or_else(|p| p.into_inner());
        if known.0 == snap.generation() {
            known.1.insert(key, album);
        }
        Ok(album)
    }

    /// [`LibraryAlbums::album_of`], counted from the catalog.
    fn count_album_of(
        &self,
        snap: &Snapshot,
        origin: u32,
        folder: &[u8],
    ) -> anyhow::Result<Option<u64>> {
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for (_, TrackId(id)) in self.catalog.tracks_in(OriginId(origin), folder)? {
            if let Some(node) = snap.node(id + FILE_INO_BASE) {
                *counts.entry(node.parent_ino()).or_default() += 1;
            }
        }
        Ok(counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(dir, _)| dir))
    }

    /// The stored picture of the first track (in the album's order) that embeds one.
    fn embedded_cover(&self, tracks: &[Shown]) -> anyhow::Result<Option<Extra>> {
        for t in tracks {
            if let Some(art) = self.catalog.art_of(OriginId(t.origin), &t.rel_path)? {
                let path = self.art.path(art);
                let Ok(md) = std::fs::metadata(&path) else {
                    tracing::warn!(path = %path.display(), "stored cover art is missing; rescan with --verify to restore it");
                    continue;
                };
                return Ok(Some(Extra {
                    name: Vec::new(),
                    size: md.len(),
                    mtime_ns: mtime_ns(&md),
                    source: ExtraSource::Stored(path),
                }));
            }
        }
        Ok(None)
    }

    /// The renditions of `cover`, made now if they were not before; none when the cover
    /// cannot be read or decoded (logged).
    fn renditions(&self, cover: &Extra) -> Vec<Extra> {
        let made = (|| -> anyhow::Result<Vec<Extra>> {
            let hash = self.cover_hash(cover)?;
            let key = ArtRef { hash, png: false };
            // Decoded once; each rendition (largest first) is made from the one before.
            let mut img: Option<image::DynamicImage> = None;
            let mut out = Vec::new();
            for (name, px) in RENDITIONS {
                let path = self.art.rendition_path(key, px);
                if !path.exists() {
                    let source = match img.take() {
                        Some(i) => i,
                        None => image::load_from_memory(&self.read(cover)?)?,
                    };
                    let scaled = fit(source, px);
                    musicfs_storage::art::write_atomically(&path, &jpeg(&scaled)?)?;
                    img = Some(scaled);
                }
                let md = std::fs::metadata(&path)?;
                out.push(Extra {
                    name: name.as_bytes().to_vec(),
                    size: md.len(),
                    mtime_ns: mtime_ns(&md),
                    source: ExtraSource::Stored(path),
                });
            }
            Ok(out)
        })();
        made.unwrap_or_else(|e| {
            tracing::warn!(cover = ?cover.source, "cannot make the cover's smaller sizes: {e:#}");
            Vec::new()
        })
    }

    /// The content hash of `cover`: a stored picture's name, or an origin file's bytes
    /// hashed once per version.
    fn cover_hash(&self, cover: &Extra) -> anyhow::Result<u128> {
        let (origin, rel_path) = match &cover.source {
            ExtraSource::Stored(_) => return Ok(xxh3_128(&self.read(cover)?)),
            ExtraSource::Origin { origin, rel_path } => (*origin, rel_path),
        };
        let key = (origin, rel_path.clone(), cover.size, cover.mtime_ns);
        if let Some(h) = self
            .hashed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(*h);
        }
        let h = xxh3_128(&self.read(cover)?);
        self.hashed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, h);
        Ok(h)
    }

    /// The bytes of `cover`.
    fn read(&self, cover: &Extra) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(
            cover.size <= MAX_COVER_BYTES,
            "cover larger than {MAX_COVER_BYTES} bytes"
        );
        match &cover.source {
            ExtraSource::Stored(path) => Ok(std::fs::read(path)?),
            ExtraSource::Origin { origin, rel_path } => {
                let origins = self.origins.load();
                let o = origins
                    .get(*origin)
                    .ok_or_else(|| anyhow::anyhow!("origin {origin} is not open"))?;
                let source = o.open(Path::new(OsStr::from_bytes(rel_path)))?;
                let mut buf = vec![0u8; source.len() as usize];
                let n = source.read_at(&mut buf, 0)?;
                buf.truncate(n);
                Ok(buf)
            }
        }
    }
}

impl AlbumExtras for LibraryAlbums {
    fn extras(&self, snap: &Snapshot, dir: u64) -> Vec<Extra> {
        self.try_extras(snap, dir).unwrap_or_else(|e| {
            tracing::warn!(dir, "cannot list the album's extra files: {e:#}");
            Vec::new()
        })
    }

    fn version(&self) -> u64 {
        self.catalog.extras_counter().unwrap_or(0)
    }
}

/// `bytes` (an image) scaled to fit in `px` × `px` (never enlarged), as JPEG.
pub fn scale(bytes: &[u8], px: u32) -> anyhow::Result<Vec<u8>> {
    jpeg(&fit(image::load_from_memory(bytes)?, px))
}

/// `img` scaled to fit in `px` × `px` (never enlarged), with `thumbnail`'s fast
/// area-averaging filter.
fn fit(img: image::DynamicImage, px: u32) -> image::DynamicImage {
    if img.width() > px || img.height() > px {
        img.thumbnail(px, px)
    } else {
        img
    }
}

/// `img` encoded as JPEG (which has no alpha channel).
fn jpeg(img: &image::DynamicImage) -> anyhow::Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img.to_rgb8()).write_to(&mut out, image::ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}

/// A folder image's rank (lower wins), or `None` when `name` is not one.
fn folder_art_rank(name: &[u8]) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    let dot = lower.iter().rposition(|b| *b == b'.')?;
    let (stem, ext) = (&lower[..dot], &lower[dot + 1..]);
    if !matches!(ext, b"jpg" | b"jpeg" | b"png") {
        return None;
    }
    FOLDER_ART.iter().position(|s| s.as_bytes() == stem)
}

/// The name a `.lrc` file takes: its track's name in the tree with `.lrc`, when a track of
/// the album in the same origin folder has its stem.
fn lyrics_name(name: &[u8], tracks: &[Shown], origin: u32, folder: &[u8]) -> Option<Vec<u8>> {
    let (stem, ext) = split_ext(name)?;
    if !ext.eq_ignore_ascii_case(b"lrc") {
        return None;
    }
    let t = tracks.iter().find(|t| {
        t.origin == origin
            && parent_of(&t.rel_path) == folder
            && split_ext(file_name(&t.rel_path)).is_some_and(|(s, _)| s == stem)
    })?;
    let (shown_stem, _) = split_ext(&t.name)?;
    Some([shown_stem, b".lrc"].concat())
}

fn split_ext(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let dot = name.iter().rposition(|b| *b == b'.').filter(|&d| d > 0)?;
    Some((&name[..dot], &name[dot + 1..]))
}

fn file_name(rel: &[u8]) -> &[u8] {
    rel.rsplit(|b| *b == b'/').next().unwrap_or(rel)
}

fn parent_of(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => &rel[..i],
        None => b"",
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn mtime_ns(md: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    md.mtime() * 1_000_000_000 + md.mtime_nsec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_images_rank_cover_then_folder_then_front() {
        assert_eq!(folder_art_rank(b"Cover.JPG"), Some(0));
        assert_eq!(folder_art_rank(b"folder.png"), Some(1));
        assert_eq!(folder_art_rank(b"front.jpeg"), Some(2));
        assert_eq!(folder_art_rank(b"back.jpg"), None);
        assert_eq!(folder_art_rank(b"cover.pdf"), None);
    }

    #[test]
    fn lyrics_take_their_tracks_name_in_the_tree() {
        let tracks = [Shown {
            name: b"01 - Song.flac".to_vec(),
            origin: 0,
            rel_path: b"rip/01 song.flac".to_vec(),
        }];
        assert_eq!(
            lyrics_name(b"01 song.lrc", &tracks, 0, b"rip"),
            Some(b"01 - Song.lrc".to_vec())
        );
        assert_eq!(lyrics_name(b"02 other.lrc", &tracks, 0, b"rip"), None);
        assert_eq!(lyrics_name(b"01 song.txt", &tracks, 0, b"rip"), None);
        assert_eq!(lyrics_name(b"01 song.lrc", &tracks, 0, b"elsewhere"), None);
    }

    #[test]
    fn scaling_fits_the_square_and_never_enlarges() {
        let img = image::RgbImage::from_fn(1000, 500, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let medium = image::load_from_memory(&scale(png.get_ref(), 600).unwrap()).unwrap();
        assert_eq!((medium.width(), medium.height()), (600, 300));
        let same = image::load_from_memory(&scale(png.get_ref(), 2000).unwrap()).unwrap();
        assert_eq!((same.width(), same.height()), (1000, 500));
    }
}
