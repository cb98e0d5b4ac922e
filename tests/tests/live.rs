#![cfg(feature = "e2e")]
//! The live library on a real mount: changes made to an origin while `musicfsd` serves it
//! become visible through the mount, even though the kernel caches names and attributes
//! for an hour (entry and attribute timeouts of 3600 s), so only the daemon's kernel
//! invalidation can make them show; open readers see one version of a file; a restart
//! with nothing changed touches no origin file and rewrites no snapshot.
//!
//! Every test builds its own origin (it is changed under the daemon) from two template
//! FLAC files made once with ffmpeg, retagged in place of running ffmpeg per track.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use musicfs_tests::harness::{
    self, encode_flac, flac_with_comments, run_ok, source_of, wait_for_log_line, xxh3_file,
    MountOptions, MountedFs, REFRESH_DONE,
};
use tempfile::TempDir;

/// The failure bound for a change to show through the mount (not a speed target).
const VISIBLE: Duration = Duration::from_secs(2);
const ARTIST: &str = "Live Artist";
/// The album directory of the tracks [`Live::new`] creates.
const FIRST: &str = "Live Artist/First (2001) [FLAC]";

/// Template FLAC files: a short sine (a few KB) and 12 s of noise (about 1 MB).
struct Templates {
    small: Vec<u8>,
    large: Vec<u8>,
    /// 6 s of different noise: a smaller replacement for `large`.
    half: Vec<u8>,
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let make = |name: &str, secs: f64, freq: u32, noise: bool| {
            let path = dir.path().join(name);
            encode_flac(&path, secs, freq, noise, &[]).unwrap_or_else(|e| panic!("{e:#}"));
            fs::read(&path).expect("reading a template")
        };
        Templates {
            small: make("small.flac", 1.0, 440, false),
            large: make("large.flac", 12.0, 7, true),
            half: make("half.flac", 6.0, 11, true),
        }
    })
}

/// Vorbis comments of track `n` of `album` (`year`) titled `title`.
fn tags<'a>(album: &'a str, year: &'a str, n: &'a str, title: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("TITLE", title),
        ("ARTIST", ARTIST),
        ("ALBUM", album),
        ("DATE", year),
        ("TRACKNUMBER", n),
    ]
}

/// An origin of its own, a state dir outside the mount's temp dir (so it survives a
/// restart), and the daemon serving them.
struct Live {
    /// Dropped first (fields drop in order): a daemon still running while `_work` is
    /// removed writes its state dir back on exit and leaves it in /tmp.
    fs: Option<MountedFs>,
    origin: PathBuf,
    state: PathBuf,
    /// Further daemon arguments.
    extra_args: Vec<String>,
    _work: TempDir,
}

impl Live {
    /// [`Live::unmounted`], mounted.
    fn new() -> Live {
        let mut live = Live::unmounted();
        live.start();
        live
    }

    /// `Live Artist/First/0N.flac` for N in 1..=3 ("One", "Two", "Three", small), plus
    /// `04.flac` ("Four", large); not mounted yet.
    fn unmounted() -> Live {
        let work = tempfile::Builder::new()
            .prefix("musicfs-live-")
            .tempdir()
            .unwrap();
        let root = work.path().canonicalize().unwrap();
        let origin = root.join("origin");
        let state = root.join("state");
        fs::create_dir_all(origin.join(ARTIST).join("First")).unwrap();
        fs::create_dir_all(&state).unwrap();
        let t = templates();
        for (n, title) in [("1", "One"), ("2", "Two"), ("3", "Three")] {
            let bytes = flac_with_comments(&t.small, &tags("First", "2001", n, title)).unwrap();
            fs::write(origin.join(format!("{ARTIST}/First/0{n}.flac")), bytes).unwrap();
        }
        let big = flac_with_comments(&t.large, &tags("First", "2001", "4", "Four")).unwrap();
        fs::write(origin.join(format!("{ARTIST}/First/04.flac")), big).unwrap();
        Live {
            _work: work,
            origin,
            state,
            fs: None,
            extra_args: Vec::new(),
        }
    }

    fn options(&self) -> MountOptions {
        let mut opts = MountOptions::live(&self.origin, &self.state);
        opts.extra_args
            .extend(self.extra_args.iter().map(Into::into));
        opts
    }

    /// Starts the daemon and returns once its watches are in place (see
    /// [`MountedFs::start_watching`]; a change made before that is still seen by the
    /// start-up reconcile: `a_change_made_as_soon_as_the_mount_appears_is_not_lost`).
    fn start(&mut self) {
        let (fs, _) = MountedFs::start_watching(self.options(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.fs = Some(fs);
    }

    fn fs(&self) -> &MountedFs {
        self.fs.as_ref().expect("the daemon is running")
    }

    fn stop(&mut self) {
        if let Some(mut fs) = self.fs.take() {
            fs.stop()
                .unwrap_or_else(|e| panic!("{e:#}; log:\n{}", fs.log()));
        }
    }

    fn src(&self, rel: &str) -> PathBuf {
        self.origin.join(rel)
    }

    fn virt(&self, rel: &str) -> PathBuf {
        self.fs().path(rel)
    }

    /// Waits (polling every 2 ms) until `cond` holds; fails with `what`, the last state
    /// `cond` described and the daemon's log after [`VISIBLE`].
    fn wait_visible(&self, what: &str, mut cond: impl FnMut() -> Result<(), String>) -> Duration {
        let start = Instant::now();
        loop {
            let outcome = cond();
            if outcome.is_ok() {
                return start.elapsed();
            }
            if start.elapsed() > VISIBLE {
                panic!(
                    "{what}: not visible through the mount within {VISIBLE:?}: {}\ndaemon log:\n{}",
                    outcome.unwrap_err(),
                    self.fs().log()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn is_enoent(path: &Path) -> bool {
    matches!(fs::metadata(path), Err(e) if e.kind() == io::ErrorKind::NotFound)
}

/// Writes `bytes` to a non-audio temp name beside `dest` (the scanner ignores it), then
/// renames it over `dest`, as tag editors do.
fn replace_by_rename(dest: &Path, bytes: &[u8]) {
    let tmp = dest.with_extension("part");
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, dest).unwrap();
}

#[test]
fn a_new_album_shows_in_a_cached_artist_listing_with_the_source_bytes() {
    let live = Live::new();
    let artist = live.virt(ARTIST);
    let second = artist.join("Second (2002) [FLAC]");
    // Cache the listing and a negative entry for the album to come.
    assert_eq!(
        names(&artist),
        BTreeSet::from(["First (2001) [FLAC]".into()])
    );
    assert!(is_enoent(&second));

    let dir = live.src(&format!("{ARTIST}/Second"));
    fs::create_dir(&dir).unwrap();
    for (n, title, freq) in [("1", "Alpha", 330), ("2", "Beta", 550)] {
        let t = tags("Second", "2002", n, title);
        encode_flac(&dir.join(format!("0{n}.flac")), 1.5, freq, false, &t).unwrap();
    }
    let expected = [
        ("01 - Alpha.flac", dir.join("01.flac")),
        ("02 - Beta.flac", dir.join("02.flac")),
    ];
    live.wait_visible("a new album", || {
        let listed = names(&artist);
        if !listed.contains("Second (2002) [FLAC]") {
            return Err(format!("artist dir lists {listed:?}"));
        }
        for (name, src) in &expected {
            let want = fs::metadata(src).unwrap().len();
            match fs::metadata(second.join(name)) {
                Ok(m) if m.len() == want => {}
                other => return Err(format!("{name}: {other:?}, want size {want}")),
            }
        }
        Ok(())
    });
    for (name, src) in &expected {
        assert_eq!(
            xxh3_file(&second.join(name)).unwrap(),
            xxh3_file(src).unwrap(),
            "content of {name} differs from its source"
        );
    }
}

/// A directory tree made while serving is watched by the rescan that shows it: a track
/// added to it later shows too. (Watches are added by scans as they list directories.)
#[test]
fn a_directory_made_while_serving_is_watched_for_later_changes() {
    // `Live::new` starts the daemon (a second start on the same state dir is refused).
    let live = Live::new();
    let dir = live.src("Newcomer/Debut");
    fs::create_dir_all(&dir).unwrap();
    let t = templates();
    let with_artist = |n: &str, title: &str| -> Vec<u8> {
        let mut tg = tags("Debut", "2010", n, title);
        tg.retain(|(k, _)| *k != "ARTIST");
        tg.push(("ARTIST", "Newcomer"));
        flac_with_comments(&t.small, &tg).unwrap()
    };
    let one = live.virt("Newcomer/Debut (2010) [FLAC]/01 - Hello.flac");
    replace_by_rename(&dir.join("01.flac"), &with_artist("1", "Hello"));
    live.wait_visible("a track in a new nested directory", || {
        fs::metadata(&one).map(drop).map_err(|e| e.to_string())
    });
    // Only a watch on the new directory itself can report this one.
    replace_by_rename(&dir.join("02.flac"), &with_artist("2", "Again"));
    let two = live.virt("Newcomer/Debut (2010) [FLAC]/02 - Again.flac");
    live.wait_visible("a second track in that directory", || {
        fs::metadata(&two).map(drop).map_err(|e| e.to_string())
    });
    assert_eq!(
        xxh3_file(&two).unwrap(),
        xxh3_file(&dir.join("02.flac")).unwrap()
    );
}

#[test]
fn a_tag_edit_by_rename_moves_the_file_to_its_new_name_and_drops_the_cached_stat() {
    let live = Live::new();
    let album = live.virt(FIRST);
    let old = album.join("02 - Two.flac");
    let new = album.join("02 - Second Take.flac");
    let before = fs::metadata(&old).unwrap();
    assert!(is_enoent(&new));
    assert!(names(&album).contains("02 - Two.flac"));

    let src = live.src(&format!("{ARTIST}/First/02.flac"));
    let tmp = src.with_extension("part");
    run_ok(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(&src)
            .args(["-map", "0", "-c", "copy", "-metadata", "title=Second Take"])
            .args(["-f", "flac"])
            .arg(&tmp),
    )
    .unwrap();
    fs::rename(&tmp, &src).unwrap();
    let size = fs::metadata(&src).unwrap().len();

    live.wait_visible("a tag edit", || {
        if !is_enoent(&old) {
            return Err(format!("old name still stats as {:?}", fs::metadata(&old)));
        }
        match fs::metadata(&new) {
            Ok(m) if m.len() == size => {}
            other => return Err(format!("new name: {other:?}, want size {size}")),
        }
        let listed = names(&album);
        if listed.contains("02 - Two.flac") || !listed.contains("02 - Second Take.flac") {
            return Err(format!("album lists {listed:?}"));
        }
        Ok(())
    });
    let after = fs::metadata(&new).unwrap();
    assert_ne!(
        (before.len(), before.mtime(), before.mtime_nsec()),
        (after.len(), after.mtime(), after.mtime_nsec()),
        "the edited file kept the attributes cached before the edit"
    );
    assert_eq!(xxh3_file(&new).unwrap(), xxh3_file(&src).unwrap());
}

#[test]
fn a_renamed_source_keeps_the_same_virtual_file_readable() {
    let live = Live::new();
    let virt = live.virt(&format!("{FIRST}/03 - Three.flac"));
    let origins = [live.origin.clone()];
    let old_src = live.src(&format!("{ARTIST}/First/03.flac"));
    let new_src = live.src(&format!("{ARTIST}/First/03 (renamed).flac"));
    let tree_before = harness::walk_tree(live.fs().mountpoint()).unwrap();
    assert_eq!(source_of(&virt, &origins).unwrap(), Some(old_src.clone()));
    let content = xxh3_file(&virt).unwrap();

    fs::rename(&old_src, &new_src).unwrap();
    live.wait_visible("a renamed source", || match source_of(&virt, &origins) {
        Ok(Some(s)) if s == new_src => Ok(()),
        other => Err(format!("source xattr: {other:?}")),
    });
    assert_eq!(
        xxh3_file(&virt).unwrap_or_else(|e| panic!("reading {}: {e:#}", virt.display())),
        content
    );
    assert_eq!(
        harness::walk_tree(live.fs().mountpoint()).unwrap(),
        tree_before,
        "renaming a source changed the virtual names"
    );
}

#[test]
fn a_deleted_source_leaves_the_listing_and_stat_fails_with_enoent() {
    let live = Live::new();
    let album = live.virt(FIRST);
    let virt = album.join("01 - One.flac");
    fs::metadata(&virt).unwrap();
    assert!(names(&album).contains("01 - One.flac"));

    fs::remove_file(live.src(&format!("{ARTIST}/First/01.flac"))).unwrap();
    live.wait_visible("a deletion", || {
        let listed = names(&album);
        if listed.contains("01 - One.flac") {
            return Err(format!("album still lists it: {listed:?}"));
        }
        if !is_enoent(&virt) {
            return Err(format!("stat gives {:?}", fs::metadata(&virt)));
        }
        Ok(())
    });
    let err = fs::File::open(&virt).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
}

#[test]
fn a_change_made_as_soon_as_the_mount_appears_is_not_lost() {
    let mut live = Live::unmounted();
    let mut opts = live.options();
    // Return as soon as the mount is in the mount table, as a user's `ls` could.
    opts.wait_ready = false;
    live.fs = Some(MountedFs::start(opts).unwrap_or_else(|e| panic!("{e:#}")));
    fs::remove_file(live.src(&format!("{ARTIST}/First/01.flac"))).unwrap();
    let virt = live.virt(&format!("{FIRST}/01 - One.flac"));
    live.wait_visible("a deletion right after mounting", || {
        if is_enoent(&virt) {
            Ok(())
        } else {
            Err(format!("stat gives {:?}", fs::metadata(&virt)))
        }
    });
}

/// `bytes` with 64 bytes of the last audio frame inverted (its CRC-16 footer kept): other
/// content, same size, same tags.
fn flipped_tail(mut bytes: Vec<u8>) -> Vec<u8> {
    let end = bytes.len() - 2;
    for b in &mut bytes[end - 64..end] {
        *b ^= 0xff;
    }
    bytes
}

#[test]
fn same_size_new_content_is_served_instead_of_cached_pages() {
    same_size_rewrites(true);
}

#[test]
fn without_passthrough_same_size_new_content_is_served_instead_of_cached_pages() {
    same_size_rewrites(false);
}

/// Rewrites two sources with other bytes of the same size and waits for the mount to
/// serve them; `passthrough: false` makes the daemon serve reads itself (through the page
/// cache).
fn same_size_rewrites(passthrough: bool) {
    let mut live = Live::unmounted();
    if !passthrough {
        live.extra_args = vec!["--passthrough".into(), "off".into()];
    }
    live.start();
    // One source rewritten in place (same inode), one replaced by a same-size copy.
    let cases = [
        (
            "01 - One.flac",
            live.src(&format!("{ARTIST}/First/01.flac")),
            true,
        ),
        (
            "02 - Two.flac",
            live.src(&format!("{ARTIST}/First/02.flac")),
            false,
        ),
    ];
    for (name, src, in_place) in &cases {
        let virt = live.virt(&format!("{FIRST}/{name}"));
        let old = fs::read(src).unwrap();
        // Fill the page cache (files are opened with FOPEN_KEEP_CACHE, so it outlives the
        // open) and the attribute cache.
        assert!(
            fs::read(&virt).unwrap() == old,
            "{name} differs from its source"
        );
        let size = fs::metadata(&virt).unwrap().len();

        let new = flipped_tail(old.clone());
        if *in_place {
            let f = fs::OpenOptions::new().write(true).open(src).unwrap();
            f.write_all_at(&new[new.len() - 66..], (new.len() - 66) as u64)
                .unwrap();
        } else {
            replace_by_rename(src, &new);
        }
        assert!(fs::read(src).unwrap() == new);
        let how = if *in_place { "in place" } else { "by rename" };
        live.wait_visible(&format!("{name} rewritten {how}"), || {
            let got = fs::read(&virt).map_err(|e| e.to_string())?;
            if got == new {
                Ok(())
            } else if got == old {
                Err("the mount still serves the old bytes".into())
            } else {
                Err(format!(
                    "the mount serves {} bytes of neither version",
                    got.len()
                ))
            }
        });
        assert_eq!(fs::metadata(&virt).unwrap().len(), size);
    }
}

/// What [`read_across_a_republish`] saw.
struct AcrossRepublish {
    /// The bytes the handle opened before the republish read in all, or the error of its
    /// second read.
    held: io::Result<Vec<u8>>,
    /// A whole-file read through a new open made after the republish, while the first
    /// handle was still open.
    fresh: Vec<u8>,
    old: Vec<u8>,
    new: Vec<u8>,
}

/// Opens the large track, reads half, replaces its source by rename with `replacement`
/// while adding a track elsewhere, waits for both to show, reads the rest through the
/// handle opened before, then (that handle still open) reads the file through a new open.
/// `passthrough: false` makes the daemon serve reads itself (through the page cache).
fn read_across_a_republish(replacement: &[u8], passthrough: bool) -> AcrossRepublish {
    let mut live = Live::unmounted();
    if !passthrough {
        live.extra_args = vec!["--passthrough".into(), "off".into()];
    }
    live.start();
    let virt = live.virt(&format!("{FIRST}/04 - Four.flac"));
    let src = live.src(&format!("{ARTIST}/First/04.flac"));
    let old = fs::read(&src).unwrap();
    let new = flac_with_comments(replacement, &tags("First", "2001", "4", "Four")).unwrap();
    assert!(old[..old.len() / 2] != new[..new.len().min(old.len() / 2)]);

    let mut reader = File::open(&virt).unwrap();
    let half = old.len() / 2;
    let mut got = vec![0u8; half];
    reader.read_exact(&mut got).unwrap();

    let elsewhere = live.src(&format!("{ARTIST}/First/05.flac"));
    let t = templates();
    fs::write(
        &elsewhere,
        flac_with_comments(&t.small, &tags("First", "2001", "5", "Five")).unwrap(),
    )
    .unwrap();
    replace_by_rename(&src, &new);
    let five = live.virt(&format!("{FIRST}/05 - Five.flac"));
    live.wait_visible("a republish", || {
        if is_enoent(&five) {
            return Err("the added track is not there yet".into());
        }
        match fs::metadata(&virt) {
            Ok(m) if m.len() == new.len() as u64 => Ok(()),
            other => Err(format!("the replaced track stats as {other:?}")),
        }
    });

    // The handle's node is the old version's: fstat shows its size, whatever the name
    // shows now.
    assert_eq!(reader.metadata().unwrap().len(), old.len() as u64, "fstat");
    let mut rest = Vec::new();
    let held = reader.read_to_end(&mut rest).map(|_| {
        got.extend_from_slice(&rest);
        got
    });
    let fresh = fs::read(&virt).unwrap();
    drop(reader);
    AcrossRepublish {
        held,
        fresh,
        old,
        new,
    }
}

/// Where `got` stops matching `want`, for messages.
fn divergence(got: &[u8], want: &[u8]) -> String {
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    format!(
        "read {} bytes, the version has {}; first differing byte: {at:?}",
        got.len(),
        want.len()
    )
}

/// The daemon reads through the origin fd it opened, so a handle opened before a
/// replace-by-rename keeps reading the bytes it opened, to their end: the new version is a
/// new node to the kernel (docs/SEMANTICS.md, "Generation numbers"), so the old inode is
/// not retired under the handle (which once made its next read fail with EIO).
fn assert_one_version(outcome: io::Result<Vec<u8>>, old: &[u8], new: &[u8]) {
    match outcome {
        Ok(got) => assert!(
            got == old,
            "a reader holding the file across a republish got a mix: {} (vs the new version: {})",
            divergence(&got, old),
            divergence(&got, new)
        ),
        Err(e) => panic!("a reader holding the file across a republish got an error: {e}"),
    }
}

#[test]
fn an_open_reader_keeps_reading_the_version_it_opened_when_the_file_grows() {
    let r = read_across_a_republish(&grown(&templates().large), true);
    assert!(r.new.len() > r.old.len());
    assert_one_version(r.held, &r.old, &r.new);
}

#[test]
fn an_open_reader_keeps_reading_the_version_it_opened_when_the_file_shrinks() {
    let r = read_across_a_republish(&templates().half, true);
    assert!(r.new.len() < r.old.len());
    assert_one_version(r.held, &r.old, &r.new);
}

#[test]
fn without_passthrough_an_open_reader_keeps_reading_the_version_it_opened_when_the_file_grows() {
    let r = read_across_a_republish(&grown(&templates().large), false);
    assert_one_version(r.held, &r.old, &r.new);
}

#[test]
fn without_passthrough_an_open_reader_keeps_reading_the_version_it_opened_when_the_file_shrinks() {
    let r = read_across_a_republish(&templates().half, false);
    assert_one_version(r.held, &r.old, &r.new);
}

fn assert_fresh_open_is_new(r: &AcrossRepublish) {
    assert!(
        r.fresh == r.new,
        "a new open after the republish (stat already shows the new size): vs the new \
         version: {}; vs the old one: {}",
        divergence(&r.fresh, &r.new),
        divergence(&r.fresh, &r.old)
    );
}

#[test]
fn a_new_open_serves_the_new_bytes_while_a_handle_on_the_old_version_is_open() {
    assert_fresh_open_is_new(&read_across_a_republish(&templates().half, true));
}

#[test]
fn without_passthrough_a_new_open_serves_the_new_bytes_while_a_handle_on_the_old_version_is_open() {
    assert_fresh_open_is_new(&read_across_a_republish(&templates().half, false));
}

/// `flac` with 64 KB of zero padding appended as a PADDING block: same tags, same audio,
/// a larger file.
fn grown(flac: &[u8]) -> Vec<u8> {
    let mut out = flac[..4].to_vec();
    let mut pos = 4;
    loop {
        let h = &flac[pos..pos + 4];
        let last = h[0] & 0x80 != 0;
        let len = usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]);
        out.push(h[0] & 0x7f);
        out.extend_from_slice(&flac[pos + 1..pos + 4 + len]);
        pos += 4 + len;
        if last {
            break;
        }
    }
    let pad = 64 * 1024;
    out.extend_from_slice(&[0x80 | 1, (pad >> 16) as u8, (pad >> 8) as u8, pad as u8]);
    out.extend(std::iter::repeat_n(0u8, pad));
    out.extend_from_slice(&flac[pos..]);
    out
}

/// A recursive inotify watch for `IN_OPEN` on every directory under a root, made with the
/// raw syscalls so the test sees exactly what the kernel reports.
struct OpenWatch {
    fd: OwnedFd,
    dirs: Vec<(i32, PathBuf)>,
}

impl OpenWatch {
    fn new(root: &Path) -> OpenWatch {
        // SAFETY: inotify_init1 takes flags only and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", io::Error::last_os_error());
        // SAFETY: the kernel just gave us this fd; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut dirs = Vec::new();
        for entry in walkdir::WalkDir::new(root) {
            let entry = entry.unwrap();
            if !entry.file_type().is_dir() {
                continue;
            }
            let c = CString::new(entry.path().as_os_str().as_bytes()).unwrap();
            // SAFETY: `c` is NUL-terminated and outlives the call.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_OPEN) };
            assert!(wd >= 0, "inotify_add_watch: {}", io::Error::last_os_error());
            dirs.push((wd, entry.into_path()));
        }
        OpenWatch { fd, dirs }
    }

    /// Every event queued so far, as (path, is a directory); fails on a queue overflow,
    /// which would hide opens.
    fn drain(&self) -> Vec<(PathBuf, bool)> {
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "inotify read: {err}");
                return events;
            }
            let mut pos = 0;
            let head = std::mem::size_of::<libc::inotify_event>();
            while pos + head <= n as usize {
                // SAFETY: the kernel wrote a whole inotify_event header at `pos`; read it
                // unaligned since the buffer is a byte array.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[pos..].as_ptr().cast()) };
                let name_bytes = &buf[pos + head..pos + head + ev.len as usize];
                let name = name_bytes.split(|&b| b == 0).next().unwrap_or_default();
                assert_eq!(
                    ev.mask & libc::IN_Q_OVERFLOW,
                    0,
                    "the inotify queue overflowed"
                );
                let dir = self
                    .dirs
                    .iter()
                    .find(|(wd, _)| *wd == ev.wd)
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                let path = dir.join(std::ffi::OsStr::from_bytes(name));
                events.push((path, ev.mask & libc::IN_ISDIR != 0));
                pos += head + ev.len as usize;
            }
        }
    }
}

#[test]
fn a_restart_with_nothing_changed_opens_no_origin_file_and_keeps_the_snapshot() {
    let mut live = Live::new();
    assert!(!names(live.fs().mountpoint()).is_empty());
    live.stop();

    let snap = live.state.join("tree.snap");
    let before = fs::metadata(&snap).unwrap();
    let watch = OpenWatch::new(&live.origin);
    // Not `Live::start`: no SIGHUP, the start-up reconcile must be the only refresh.
    let fs = MountedFs::start(live.options()).unwrap_or_else(|e| panic!("{e:#}"));
    live.fs = Some(fs);
    let (line, _) = wait_for_log_line(
        live.fs().log_path(),
        0,
        REFRESH_DONE,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        line.contains("refresh found nothing new"),
        "the start-up reconcile of an unchanged origin did: {line}\nlog:\n{}",
        live.fs().log()
    );
    assert!(!names(live.fs().mountpoint()).is_empty());

    let events = watch.drain();
    let files: Vec<&PathBuf> = events.iter().filter(|(_, d)| !d).map(|(p, _)| p).collect();
    assert!(
        files.is_empty(),
        "the restart opened origin files: {files:?}\nlog:\n{}",
        live.fs().log()
    );
    assert!(
        events.iter().any(|(_, d)| *d),
        "no directory was opened either: the reconcile did not walk the origin"
    );
    let after = fs::metadata(&snap).unwrap();
    assert_eq!(
        (before.ino(), before.mtime(), before.mtime_nsec()),
        (after.ino(), after.mtime(), after.mtime_nsec()),
        "tree.snap was rewritten by a restart with nothing changed"
    );
    let temps = fs::read_dir(&live.state)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp")
        })
        .count();
    assert_eq!(temps, 0, "a temp file was left in the state dir");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn change_to_visible_latency_report() {
    let live = Live::new();
    let album = live.virt(FIRST);
    let src = live.src(&format!("{ARTIST}/First/03.flac"));
    let base = fs::read(&src).unwrap();
    let mut old = album.join("03 - Three.flac");
    let mut samples = Vec::with_capacity(100);
    for i in 0..100 {
        let title = format!("Take {i:03}");
        let new = album.join(format!("03 - {title}.flac"));
        // Both names cached: a positive entry for the old one, a negative one for the new.
        fs::metadata(&old).unwrap();
        assert!(is_enoent(&new));
        let bytes = flac_with_comments(&base, &tags("First", "2001", "3", &title)).unwrap();
        let tmp = src.with_extension("part");
        let mut f = File::create(&tmp).unwrap();
        f.write_all(&bytes).unwrap();
        drop(f);
        fs::rename(&tmp, &src).unwrap();
        let start = Instant::now();
        live.wait_visible(&format!("edit {i}"), || {
            if fs::metadata(&new).is_ok() {
                Ok(())
            } else {
                Err("the new name is not there yet".into())
            }
        });
        samples.push(start.elapsed());
        old = new;
    }
    samples.sort();
    eprintln!(
        "change_to_visible_latency_report: {} tag edits by rename, change -> visible through the mount: p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}

/// Every `republished` line of the daemon's log, in order.
fn republish_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("republished"))
        .map(str::to_string)
        .collect()
}

/// An add, a re-tag and a delete while serving are each published as a delta on the served
/// snapshot (no new base), show through the mount, and a restart serves the same tree
/// from base + delta without republishing.
#[test]
fn small_changes_are_published_as_deltas_and_a_restart_serves_them() {
    let mut live = Live::new();
    let album = live.virt(FIRST);
    let dir = live.src(&format!("{ARTIST}/First"));
    let t = templates();

    fs::write(
        dir.join("05.flac"),
        flac_with_comments(&t.small, &tags("First", "2001", "5", "Five")).unwrap(),
    )
    .unwrap();
    live.wait_visible("an added track", || {
        match names(&album).contains("05 - Five.flac") {
            true => Ok(()),
            false => Err(format!("album lists {:?}", names(&album))),
        }
    });
    replace_by_rename(
        &dir.join("01.flac"),
        &flac_with_comments(&t.small, &tags("First", "2001", "1", "Uno")).unwrap(),
    );
    live.wait_visible("a re-tagged track", || {
        let listed = names(&album);
        match listed.contains("01 - Uno.flac") && !listed.contains("01 - One.flac") {
            true => Ok(()),
            false => Err(format!("album lists {listed:?}")),
        }
    });
    fs::remove_file(dir.join("02.flac")).unwrap();
    live.wait_visible("a deleted track", || {
        match is_enoent(&album.join("02 - Two.flac")) {
            true => Ok(()),
            false => Err(format!("album lists {:?}", names(&album))),
        }
    });

    let log = live.fs().log();
    let republished = republish_lines(&log);
    assert!(
        !republished.is_empty() && republished.iter().all(|l| l.contains("delta=true")),
        "each change should be a delta on the served snapshot: {republished:#?}\nlog:\n{log}"
    );
    let shown = names(&album);
    assert_eq!(
        shown,
        BTreeSet::from([
            "01 - Uno.flac".to_string(),
            "03 - Three.flac".to_string(),
            "04 - Four.flac".to_string(),
            "05 - Five.flac".to_string(),
        ])
    );
    assert!(live.state.join("tree.snap.delta").exists());

    live.stop();
    let fs = MountedFs::start(live.options()).unwrap_or_else(|e| panic!("{e:#}"));
    live.fs = Some(fs);
    let (line, _) = wait_for_log_line(
        live.fs().log_path(),
        0,
        REFRESH_DONE,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        line.contains("refresh found nothing new"),
        "base + delta were not served as current: {line}\nlog:\n{}",
        live.fs().log()
    );
    assert_eq!(names(&live.virt(FIRST)), shown);
    let five = live.virt(&format!("{FIRST}/05 - Five.flac"));
    assert_eq!(
        xxh3_file(&five).unwrap(),
        xxh3_file(&dir.join("05.flac")).unwrap()
    );
}

/// The `statted=` and `listed=` counts of every scan the daemon logged from byte `from`
/// of its log on (the `scan finished` lines of `musicfs_index::scan`).
fn scans_since(fs: &MountedFs, from: usize) -> Vec<(u64, u64)> {
    let log = fs.log();
    let field = |line: &str, key: &str| -> u64 {
        let (_, rest) = line
            .split_once(&format!(" {key}="))
            .unwrap_or_else(|| panic!("no {key} in {line}"));
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
    };
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("scan finished"))
        .map(|l| (field(l, "statted"), field(l, "listed")))
        .collect()
}

/// 200 album directories, then one file added, re-tagged in place and deleted deep in the
/// tree: each change shows through the mount, and the rescans it causes stat only the files
/// of its directory and list only that directory (the scans' log lines count both).
#[test]
fn a_change_deep_in_a_large_tree_rescans_only_its_directory() {
    let mut live = Live::unmounted();
    let t = templates();
    let track = |album: usize, n: usize, title: &str| -> Vec<u8> {
        let (artist, album, n) = (
            format!("Crowd {}", album % 20),
            format!("Album {album}"),
            n.to_string(),
        );
        let tags = [
            ("TITLE", title),
            ("ARTIST", artist.as_str()),
            ("ALBUM", album.as_str()),
            ("DATE", "2003"),
            ("TRACKNUMBER", n.as_str()),
        ];
        flac_with_comments(&t.small, &tags).unwrap()
    };
    let origin = live.origin.clone();
    let src_dir = |album: usize| origin.join(format!("Crowd {}/Album {album}/Disc 1", album % 20));
    for album in 0..200 {
        let dir = src_dir(album);
        fs::create_dir_all(&dir).unwrap();
        for n in 1..=2 {
            fs::write(
                dir.join(format!("0{n}.flac")),
                track(album, n, "Crowd song"),
            )
            .unwrap();
        }
    }
    // Not start_watching: no SIGHUP rescan that could still run when the changes are made;
    // the start-up reconcile is the only refresh before them.
    let fs = MountedFs::start(live.options()).unwrap_or_else(|e| panic!("{e:#}"));
    let (_, mut from) = wait_for_log_line(fs.log_path(), 0, REFRESH_DONE, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));
    live.fs = Some(fs);
    let whole = scans_since(live.fs(), 0);
    assert!(
        whole.iter().any(|&(statted, _)| statted > 400),
        "the start-up scans walk everything: {whole:?}"
    );

    let deep = 137;
    let dir = src_dir(deep);
    let album = live.virt("Crowd 17/Album 137 (2003) [FLAC]");
    let mut check = |what: &str, files: u64, visible: &dyn Fn() -> Result<(), String>| {
        live.wait_visible(what, visible);
        let scans = scans_since(live.fs(), from);
        assert!(!scans.is_empty(), "{what}: no rescan logged");
        for (statted, listed) in &scans {
            assert!(
                *statted <= files && *listed == 1,
                "{what}: a rescan stat'ed {statted} files in {listed} directories, want at most {files} in 1: {scans:?}"
            );
        }
        from = live.fs().log().len();
    };

    replace_by_rename(&dir.join("03.flac"), &track(deep, 3, "Added"));
    let added = album.join("03 - Added.flac");
    check("an added file", 3, &|| {
        fs::metadata(&added).map(drop).map_err(|e| e.to_string())
    });

    // A tag edit in place changes the file, not its directory's mtime.
    fs::write(dir.join("01.flac"), track(deep, 1, "Retagged")).unwrap();
    let retagged = album.join("01 - Retagged.flac");
    check("a re-tag in place", 3, &|| {
        fs::metadata(&retagged).map(drop).map_err(|e| e.to_string())
    });

    fs::remove_file(dir.join("02.flac")).unwrap();
    let deleted = album.join("02 - Crowd song.flac");
    check("a deletion", 2, &|| {
        if is_enoent(&deleted) {
            Ok(())
        } else {
            Err(format!("{} still there", deleted.display()))
        }
    });
    assert_eq!(
        names(&album),
        BTreeSet::from(["01 - Retagged.flac".into(), "03 - Added.flac".into()])
    );
    let other = live.virt("Crowd 3/Album 23 (2003) [FLAC]");
    assert_eq!(names(&other).len(), 2, "the other albums are as they were");
}

#[test]
fn before_the_refresh_an_open_of_the_new_version_works_beside_a_handle_on_the_old() {
    two_versions_before_the_refresh(true);
}

#[test]
fn without_passthrough_before_the_refresh_an_open_of_the_new_version_works_beside_a_handle_on_the_old(
) {
    two_versions_before_the_refresh(false);
}

/// An origin polled once an hour: after its source is replaced (same size, other bytes),
/// the tree still shows the old version, while a handle on the old version is open and a
/// new open reaches the new file. The new open must succeed (with passthrough, the kernel
/// refuses a second backing file for one inode with EIO: it shares the held one) and read
/// one version whole, never a mix (without passthrough: the old one's cached pages).
fn two_versions_before_the_refresh(passthrough: bool) {
    let work = TempDir::new().unwrap();
    let origin = work.path().join("origin");
    musicfs_tests::remote::generate(
        &origin,
        &[musicfs_tests::remote::Track {
            rel: "Band/Record/one.flac",
            input: "sine=frequency=440:sample_rate=44100:duration=4",
            codec: &["-c:a", "flac"],
            title: "One",
        }],
    )
    .unwrap();
    let src = origin.join("Band/Record/one.flac");
    let config = work.path().join("musicfs.toml");
    fs::write(
        &config,
        format!(
            "[[origin]]\npath = {:?}\nwatch = \"poll\"\npoll_interval_secs = 3600\n",
            origin
        ),
    )
    .unwrap();
    let mut opts = MountOptions::new(Vec::<PathBuf>::new());
    opts.config = Some(config);
    opts.state_dir = Some(work.path().join("state"));
    if !passthrough {
        opts.extra_args = vec!["--passthrough".into(), "off".into()];
    }
    let fs_ = MountedFs::start(opts).unwrap();
    let virt = harness::walk_files(fs_.mountpoint())
        .unwrap()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "flac"))
        .expect("the track is shown");
    let old = fs::read(&src).unwrap();
    let held = File::open(&virt).unwrap();
    let mut head = vec![0u8; old.len() / 2];
    held.read_exact_at(&mut head, 0).unwrap();
    assert!(
        head[..] == old[..head.len()],
        "the first handle reads its version"
    );

    let new = flipped_tail(old.clone());
    replace_by_rename(&src, &new);
    // No refresh comes for an hour: the tree still shows the old version.
    let mut fresh = File::open(&virt).unwrap_or_else(|e| {
        panic!("an open of the replaced source failed while a handle on the old one is open: {e}")
    });
    let mut got = Vec::new();
    fresh.read_to_end(&mut got).unwrap();
    // With passthrough it shares the version held open (the one the tree still shows) until
    // the refresh; without, it reads the new file. Either whole: never a mix. (The suite
    // also runs with `--passthrough off` given to every daemon: the mode is not the test's.)
    assert!(
        got == old || got == new,
        "the new open read {} bytes that are neither version whole (passthrough asked: {passthrough})",
        got.len()
    );
    let mut rest = vec![0u8; old.len() - head.len()];
    held.read_exact_at(&mut rest, head.len() as u64).unwrap();
    head.extend(rest);
    assert!(
        head == old,
        "the handle opened before read a mix of versions"
    );
    drop(fs_);
}
