#![cfg(feature = "e2e")]
//! Album folders on a real mount show more than tracks: `cover.jpg` (the embedded front
//! cover, or the origin folder's own image, which wins), its 600 px and 200 px renditions,
//! and the files that sat beside the tracks (booklets, logs, lyrics renamed after their
//! track), bit-exact, in the album most of their folder's tracks belong to; hidden and
//! system files never show.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use musicfs_tests::harness::{
    self, flac_with_comments, run_ok, walk_files, MountOptions, MountedFs,
};

/// A JPEG of `w` × `h` pixels made with ffmpeg.
fn jpeg(dir: &Path, name: &str, w: u32, h: u32, color: &str) -> Vec<u8> {
    let path = dir.join(name);
    run_ok(
        Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                &format!("color=c={color}:s={w}x{h}"),
                "-frames:v",
                "1",
            ])
            .arg(&path),
    )
    .unwrap();
    fs::read(&path).unwrap()
}

/// `flac` with a FLAC PICTURE block (front cover, JPEG) holding `picture` after its
/// STREAMINFO.
fn with_front_cover(flac: &[u8], picture: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&3u32.to_be_bytes()); // front cover
    let mime = b"image/jpeg";
    body.extend_from_slice(&(mime.len() as u32).to_be_bytes());
    body.extend_from_slice(mime);
    body.extend_from_slice(&0u32.to_be_bytes()); // no description
    for v in [1000u32, 1000, 24, 0] {
        body.extend_from_slice(&v.to_be_bytes());
    }
    body.extend_from_slice(&(picture.len() as u32).to_be_bytes());
    body.extend_from_slice(picture);
    // STREAMINFO is the first block (4-byte header + 34 bytes) and is not the last one.
    assert_eq!(&flac[..4], b"fLaC");
    assert_eq!(flac[4] & 0x80, 0, "STREAMINFO must not be the last block");
    let at = 4 + 4 + 34;
    let len = body.len() as u32;
    let mut out = flac[..at].to_vec();
    out.extend_from_slice(&[6, (len >> 16) as u8, (len >> 8) as u8, len as u8]);
    out.extend_from_slice(&body);
    out.extend_from_slice(&flac[at..]);
    out
}

fn track(
    dir: &Path,
    file: &str,
    title: &str,
    album: &str,
    artist: &str,
    n: u32,
    cover: Option<&[u8]>,
) {
    let n = n.to_string();
    let bytes = flac_with_comments(
        harness::one_second_flac(),
        &[
            ("TITLE", title),
            ("ARTIST", artist),
            ("ALBUMARTIST", artist),
            ("ALBUM", album),
            ("DATE", "2001"),
            ("TRACKNUMBER", &n),
        ],
    )
    .unwrap();
    let bytes = match cover {
        Some(c) => with_front_cover(&bytes, c),
        None => bytes,
    };
    fs::write(dir.join(file), bytes).unwrap();
}

/// (width, height) of an image, by ffprobe.
fn size_of(path: &Path) -> (u32, u32) {
    let out = run_ok(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=width,height",
                "-of",
                "csv=p=0",
            ])
            .arg(path),
    )
    .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (w, h) = text
        .trim()
        .split_once(',')
        .unwrap_or_else(|| panic!("ffprobe said {text:?}"));
    (w.parse().unwrap(), h.parse().unwrap())
}

/// The mount's folder holding the track titled `title`.
fn album_dir(fs: &MountedFs, title: &str) -> PathBuf {
    let files = walk_files(fs.mountpoint()).unwrap();
    let track = files
        .iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().contains(title))
        .unwrap_or_else(|| panic!("no track {title} in {files:#?}\n{}", fs.log()));
    fs.mountpoint().join(track.parent().unwrap())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn album_folders_show_cover_art_and_the_files_beside_their_tracks() {
    let origin_dir = tempfile::tempdir().unwrap();
    let origin = origin_dir.path().canonicalize().unwrap();
    let work = tempfile::tempdir().unwrap();

    // Album One: embedded front cover, a booklet, a rip log, lyrics and junk.
    let one = origin.join("rip one");
    fs::create_dir_all(&one).unwrap();
    let embedded = jpeg(work.path(), "embedded.jpg", 1000, 1000, "red");
    track(
        &one,
        "01 alpha.flac",
        "Alpha",
        "One",
        "Band",
        1,
        Some(&embedded),
    );
    track(
        &one,
        "02 beta.flac",
        "Beta",
        "One",
        "Band",
        2,
        Some(&embedded),
    );
    fs::write(one.join("booklet.pdf"), b"%PDF-1.4 a booklet\n").unwrap();
    fs::write(one.join("rip.log"), b"EAC extraction logfile\n").unwrap();
    fs::write(one.join("01 alpha.lrc"), b"[00:00.00]Alpha lyrics\n").unwrap();
    for junk in [
        "._booklet.pdf",
        ".DS_Store",
        "Thumbs.db",
        "desktop.ini",
        "setup.exe",
    ] {
        fs::write(one.join(junk), b"junk").unwrap();
    }

    // Album Two: embedded art too, but the folder's own image wins.
    let two = origin.join("rip two");
    fs::create_dir_all(&two).unwrap();
    let other = jpeg(work.path(), "other.jpg", 300, 300, "blue");
    let folder = jpeg(work.path(), "folder.jpg", 800, 400, "green");
    track(&two, "01.flac", "Gamma", "Two", "Band", 1, Some(&other));
    fs::write(two.join("folder.jpg"), &folder).unwrap();

    // One folder, two albums: its notes go with the album most of its tracks are in.
    let mixed = origin.join("mixed");
    fs::create_dir_all(&mixed).unwrap();
    track(&mixed, "a.flac", "Delta", "Three", "Trio", 1, None);
    track(&mixed, "b.flac", "Epsilon", "Three", "Trio", 2, None);
    track(&mixed, "c.flac", "Zeta", "Four", "Solo", 1, None);
    fs::write(mixed.join("notes.txt"), b"liner notes\n").unwrap();

    let before = harness::checksum_tree(&origin).unwrap();
    let state = tempfile::tempdir().unwrap();
    let fs = MountedFs::start(MountOptions::live(&origin, &state.path().join("state"))).unwrap();

    let a1 = album_dir(&fs, "Alpha");
    let listed = names(&a1);
    let lyrics = listed
        .iter()
        .find(|n| n.ends_with(".lrc"))
        .unwrap_or_else(|| panic!("no lyrics in {listed:?}"));
    let alpha = listed
        .iter()
        .find(|n| n.contains("Alpha") && n.ends_with(".flac"))
        .unwrap();
    assert_eq!(
        lyrics.trim_end_matches(".lrc"),
        alpha.trim_end_matches(".flac"),
        "the lyrics take their track's name: {listed:?}"
    );
    let want: Vec<String> = {
        let mut v = vec![
            alpha.clone(),
            listed.iter().find(|n| n.contains("Beta")).unwrap().clone(),
            lyrics.clone(),
            "booklet.pdf".into(),
            "cover-medium.jpg".into(),
            "cover-thumb.jpg".into(),
            "cover.jpg".into(),
            "rip.log".into(),
        ];
        v.sort();
        v
    };
    assert_eq!(
        listed,
        want,
        "no hidden or system file, nothing missing\n{}",
        fs.log()
    );
    assert_eq!(
        fs::read(a1.join("cover.jpg")).unwrap(),
        embedded,
        "cover.jpg is the embedded picture"
    );
    assert_eq!(size_of(&a1.join("cover-medium.jpg")), (600, 600));
    assert_eq!(size_of(&a1.join("cover-thumb.jpg")), (200, 200));
    assert_eq!(
        fs::read(a1.join("booklet.pdf")).unwrap(),
        fs::read(one.join("booklet.pdf")).unwrap()
    );
    assert_eq!(
        fs::read(a1.join("rip.log")).unwrap(),
        fs::read(one.join("rip.log")).unwrap()
    );
    assert_eq!(
        fs::read(a1.join(lyrics)).unwrap(),
        fs::read(one.join("01 alpha.lrc")).unwrap()
    );
    // stat agrees with what reads return.
    let md = fs::metadata(a1.join("cover-medium.jpg")).unwrap();
    assert_eq!(
        md.len(),
        fs::read(a1.join("cover-medium.jpg")).unwrap().len() as u64
    );
    assert!(
        fs::write(a1.join("cover.jpg"), b"x").is_err(),
        "extras are read-only"
    );

    let a2 = album_dir(&fs, "Gamma");
    assert_eq!(
        fs::read(a2.join("cover.jpg")).unwrap(),
        folder,
        "the folder's image wins"
    );
    assert_eq!(fs::read(a2.join("folder.jpg")).unwrap(), folder);
    assert_eq!(size_of(&a2.join("cover-medium.jpg")), (600, 300));
    assert_eq!(size_of(&a2.join("cover-thumb.jpg")), (200, 100));

    let a3 = album_dir(&fs, "Delta");
    let a4 = album_dir(&fs, "Zeta");
    assert_ne!(a3, a4);
    assert_eq!(fs::read(a3.join("notes.txt")).unwrap(), b"liner notes\n");
    assert!(
        !names(&a4).contains(&"notes.txt".to_string()),
        "{:?}",
        names(&a4)
    );
    assert!(
        !names(&a4).iter().any(|n| n.starts_with("cover")),
        "no art, no cover: {:?}",
        names(&a4)
    );

    assert_eq!(
        harness::checksum_tree(&origin).unwrap(),
        before,
        "the origin was not written"
    );

    // Live: a file added beside the tracks shows, one removed goes, without a remount
    // (the album's listing was cached by the kernel above).
    fs::write(one.join("back.jpg"), b"back cover").unwrap();
    fs::remove_file(one.join("rip.log")).unwrap();
    let shows = || {
        let n = names(&a1);
        n.contains(&"back.jpg".to_string()) && !n.contains(&"rip.log".to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shows() {
        assert!(Instant::now() < deadline, "{:?}\n{}", names(&a1), fs.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read(a1.join("back.jpg")).unwrap(), b"back cover");
    assert!(fs::metadata(a1.join("rip.log")).is_err());
    assert!(
        fs.log().contains("album folders' extra files changed"),
        "the kernel was told to forget the album's listing:\n{}",
        fs.log()
    );
}
