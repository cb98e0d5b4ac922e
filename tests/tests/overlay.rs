#![cfg(feature = "e2e")]
//! The metadata overlay on a real mount: `musicfs tag set` on a FLAC, an MP3, an Ogg
//! Vorbis, an Opus and an M4A file (made by ffmpeg), then per file: ffprobe through the
//! mount shows the new tags, mutagen reads the same values from the served file as from a
//! reference copy it tagged itself, the decoded audio is the original's, `stat` agrees
//! with the bytes read, reads at random offsets and sizes agree with the whole file, and
//! mpd's database shows the edit after `mpc update`. Then `tag diff`, `tag clear` (the
//! served file is the source again, byte for byte), edits surviving a restart, `tag get`
//! with no daemon, and the origin untouched throughout.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, ensure, Context, Result};
use musicfs_tests::harness::{
    audio_md5, checksum_tree, run_ok, walk_files, MountOptions, MountedFs, SplitMix64,
};
use musicfs_tests::harness::{musicfs_cmd as musicfs, musicfs_cmd_ok as musicfs_ok};
use musicfs_tests::player::Mpd;
use serde_json::Value;

const FORMATS: [&str; 5] = ["flac", "mp3", "ogg", "opus", "m4a"];

fn encode(dir: &Path, ext: &str, track: usize) -> Result<PathBuf> {
    let path = dir.join(format!("source {track}.{ext}"));
    let codec: &[&str] = match ext {
        "mp3" => &["-c:a", "libmp3lame", "-write_id3v1", "1"],
        "ogg" => &["-c:a", "libvorbis"],
        "opus" => &["-c:a", "libopus"],
        // moov in front of mdat: the edit must shift every chunk offset.
        "m4a" => &["-c:a", "aac", "-movflags", "+faststart"],
        _ => &["-c:a", "flac"],
    };
    run_ok(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("sine=frequency={}:duration=3", 300 + 100 * track))
            .args(codec)
            .args(["-metadata", &format!("title=Original {ext}")])
            .args(["-metadata", "artist=Overlay Artist"])
            .args(["-metadata", "album=Overlay Album"])
            .args(["-metadata", "date=2001"])
            .args(["-metadata", &format!("track={track}")])
            .arg(&path),
    )?;
    Ok(path)
}

/// The served file of format `ext` (one per format in the fixture).
fn served(mount: &MountedFs, ext: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = walk_files(mount.mountpoint())?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        other => bail!("expected one .{ext} in the mount, found {other:?}"),
    }
}

/// ffprobe's format tags, keys lower-cased.
fn ffprobe_tags(path: &Path) -> Result<BTreeMap<String, String>> {
    let out = run_ok(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format_tags:stream_tags",
                "-of",
                "json",
            ])
            .arg(path),
    )?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let mut tags = BTreeMap::new();
    let mut take = |t: &Value| {
        if let Some(obj) = t.as_object() {
            for (k, v) in obj {
                tags.insert(k.to_lowercase(), v.as_str().unwrap_or_default().to_string());
            }
        }
    };
    take(&v["format"]["tags"]);
    for s in v["streams"].as_array().into_iter().flatten() {
        take(&s["tags"]);
    }
    Ok(tags)
}

const MUTAGEN: &str = r#"
import json, sys, mutagen
mode, path = sys.argv[1], sys.argv[2]
f = mutagen.File(path, easy=True)
if mode == "tag":
    for kv in sys.argv[3:]:
        k, v = kv.split("=", 1)
        f[k] = [v]
    f.save()
print(json.dumps({k: list(f.get(k, [])) for k in ("title", "artist", "album")}))
"#;

/// mutagen's easy tags (title, artist, album) of `path`; with `set`, written first.
fn mutagen(path: &Path, set: &[&str]) -> Result<Value> {
    let mode = if set.is_empty() { "read" } else { "tag" };
    let out = run_ok(
        Command::new("/usr/bin/python3")
            .args(["-c", MUTAGEN, mode])
            .arg(path)
            .args(set),
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// mpd's database: `file|Title|Album` per song.
fn mpd_tags(mpd: &Mpd) -> String {
    let mut out = String::new();
    for (k, v) in mpd.command("listallinfo") {
        match k.as_str() {
            "file" => out.push_str(&format!("\n{v}")),
            "Title" | "Album" => out.push_str(&format!("|{v}")),
            _ => {}
        }
    }
    out
}

#[test]
fn tag_edits_are_served_in_every_format_without_touching_the_origin() -> Result<()> {
    let work = tempfile::tempdir()?;
    let origin = work.path().join("origin");
    fs::create_dir_all(&origin)?;
    let mut sources = BTreeMap::new();
    for (i, ext) in FORMATS.iter().enumerate() {
        sources.insert(*ext, encode(&origin, ext, i + 1)?);
    }
    let before = checksum_tree(&origin)?;
    let state = work.path().join("state");
    let mut opts = MountOptions::new([origin.clone()]);
    opts.state_dir = Some(state.clone());
    let mut mount = MountedFs::start(opts)?;
    // The start-up reconcile first, so the edits are what the next round publishes.
    musicfs_ok(&state, &["refresh"])?;

    let mpd = Mpd::start(mount.mountpoint());
    mpd.mpc(&["update", "--wait"]);
    ensure!(
        mpd_tags(&mpd).contains("Original flac"),
        "{}",
        mpd_tags(&mpd)
    );

    let mut rng = SplitMix64::new(17);
    for ext in FORMATS {
        let before_edit = served(&mount, ext)?;
        let title = format!("Édité {ext} ✓");
        let out = musicfs_ok(
            &state,
            &[
                "tag",
                "set",
                before_edit.to_str().context("path")?,
                &format!("title={title}"),
                "album=Edited Album",
            ],
        )?;
        ensure!(out.contains("1 track(s) changed"), "tag set printed {out}");
        let file = served(&mount, ext)?;
        ensure!(
            file.to_string_lossy().contains("Edited Album"),
            "the tree moved the file to its new album: {}",
            file.display()
        );
        let tags = ffprobe_tags(&file)?;
        ensure!(
            tags.get("title") == Some(&title)
                && tags.get("album").map(String::as_str) == Some("Edited Album"),
            "{ext}: ffprobe shows {tags:?}"
        );
        ensure!(
            tags.get("artist").map(String::as_str) == Some("Overlay Artist"),
            "{ext}: untouched fields are kept: {tags:?}"
        );
        // The audio is the source's.
        ensure!(
            audio_md5(&file)? == audio_md5(&sources[ext])?,
            "{ext}: decoded audio differs"
        );
        // mutagen reads the same tags from the served file as from a copy it tagged itself.
        let reference = work.path().join(format!("reference.{ext}"));
        fs::copy(&sources[ext], &reference)?;
        let want = mutagen(
            &reference,
            &[&format!("title={title}"), "album=Edited Album"],
        )?;
        let got = mutagen(&file, &[])?;
        ensure!(
            got == want,
            "{ext}: mutagen reads {got} from the mount, {want} from its own"
        );
        // stat before and after reading agrees with the bytes; random reads agree.
        let size = fs::metadata(&file)?.len();
        let whole = fs::read(&file)?;
        ensure!(
            whole.len() as u64 == size,
            "{ext}: stat {size}, read {}",
            whole.len()
        );
        ensure!(
            fs::metadata(&file)?.len() == size,
            "{ext}: size changed after a read"
        );
        let f = fs::File::open(&file)?;
        for _ in 0..200 {
            let off = rng.below(size + 10);
            let len = 1 + rng.below(70_000) as usize;
            let mut buf = vec![0u8; len];
            let n = f.read_at(&mut buf, off)?;
            let lo = (off as usize).min(whole.len());
            let hi = (off as usize + len).min(whole.len());
            ensure!(
                buf[..n] == whole[lo..hi],
                "{ext}: read of {len} at {off} differs"
            );
        }
    }

    // mpd rescans by mtime: the edited files show their new tags.
    mpd.mpc(&["update", "--wait"]);
    let listed = mpd_tags(&mpd);
    for ext in FORMATS {
        let line = listed
            .lines()
            .find(|l| {
                l.split('|')
                    .next()
                    .is_some_and(|f| f.ends_with(&format!(".{ext}")))
            })
            .unwrap_or_default();
        ensure!(
            line.contains(&format!("|Édité {ext} ✓")) && line.contains("|Edited Album"),
            "mpd lists:\n{listed}\n{}",
            mpd.log()
        );
    }
    drop(mpd);

    // diff shows the edit with the file's value; clear brings the source back byte for byte.
    let flac = served(&mount, "flac")?;
    let diff = musicfs_ok(&state, &["tag", "diff", flac.to_str().context("path")?])?;
    ensure!(
        diff.contains("*title") && diff.contains("was: Original flac"),
        "{diff}"
    );
    musicfs_ok(&state, &["tag", "clear", flac.to_str().context("path")?])?;
    let flac = served(&mount, "flac")?;
    ensure!(
        fs::read(&flac)? == fs::read(&sources["flac"])?,
        "a cleared file is its source"
    );
    let bad = musicfs(&state, &["tag", "set", "No/Such/File.flac", "title=x"])?;
    ensure!(!bad.status.success(), "a missing path is an error");
    let bad = musicfs(
        &state,
        &["tag", "set", flac.to_str().context("path")?, "mood=x"],
    )?;
    ensure!(!bad.status.success(), "an unknown field is an error");

    // The edits survive a restart.
    mount.stop()?;
    let out = musicfs_ok(
        &state,
        &["tag", "get", sources["mp3"].to_str().context("path")?],
    )?;
    ensure!(out.contains("Édité mp3 ✓"), "offline tag get: {out}");
    let mut opts = MountOptions::new([origin.clone()]);
    opts.state_dir = Some(state.clone());
    let mount = MountedFs::start(opts)?;
    let mp3 = served(&mount, "mp3")?;
    ensure!(ffprobe_tags(&mp3)?.get("title").map(String::as_str) == Some("Édité mp3 ✓"));
    ensure!(audio_md5(&mp3)? == audio_md5(&sources["mp3"])?);
    drop(mount);

    ensure!(checksum_tree(&origin)? == before, "the origin changed");
    Ok(())
}

/// `beet ARGS` with a library of its own in `dir` that never copies, writes or autotags.
fn beet(dir: &Path, music: &Path, args: &[&str]) -> Result<Output> {
    let config = dir.join("config.yaml");
    if !config.exists() {
        fs::write(
            &config,
            format!(
                "directory: {}\nlibrary: {}\nimport:\n  copy: no\n  write: no\n  autotag: no\nplugins: []\n",
                music.display(),
                dir.join("library.db").display()
            ),
        )?;
    }
    run_ok(
        Command::new("beet")
            .env("BEETSDIR", dir)
            .arg("-c")
            .arg(&config)
            .args(args)
            .stdin(Stdio::null()),
    )
}

/// An iTunes `Library.xml` with one track at `path`, named `name`, played `plays` times.
fn itunes_xml(path: &Path, name: &str, plays: u32) -> String {
    let url: String = path
        .to_str()
        .unwrap_or_default()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple Computer//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Major Version</key><integer>1</integer>
  <key>Tracks</key>
  <dict>
    <key>1001</key>
    <dict>
      <key>Track ID</key><integer>1001</integer>
      <key>Name</key><string>{name}</string>
      <key>Artist</key><string>Overlay Artist</string>
      <key>Play Count</key><integer>{plays}</integer>
      <key>Play Date UTC</key><date>2024-05-01T10:00:00Z</date>
      <key>Location</key><string>file://{url}</string>
    </dict>
  </dict>
</dict>
</plist>
"#
    )
}

/// `musicfs tree --long` without inode numbers (ids are handed out in scan order).
fn tree_shape(state: &Path) -> Result<Vec<(u64, PathBuf, Option<PathBuf>)>> {
    let mut v: Vec<_> = musicfs_tests::harness::musicfs_tree_long(state)?
        .into_iter()
        .map(|e| (e.size, e.path, e.source))
        .collect();
    v.sort();
    Ok(v)
}

fn plays_of(export: &Value, source: &Path) -> Result<u64> {
    let tracks = export["tracks"].as_array().context("tracks")?;
    let t = tracks
        .iter()
        .find(|t| t["source"].as_str() == source.to_str())
        .with_context(|| format!("{} not exported", source.display()))?;
    t["plays"].as_u64().context("plays")
}

#[test]
fn beets_and_itunes_import_and_an_export_round_trips() -> Result<()> {
    let work = tempfile::tempdir()?;
    let origin = work.path().join("music");
    fs::create_dir_all(&origin)?;
    let one = encode(&origin, "flac", 1)?;
    let two = encode(&origin, "mp3", 2)?;
    let three = encode(&origin, "ogg", 3)?;
    let before = checksum_tree(&origin)?;
    let state = work.path().join("state");
    let scan = |state: &Path| -> Result<()> {
        let out = musicfs_tests::harness::musicfs_scan(std::slice::from_ref(&origin), state)?;
        ensure!(
            out.status.success(),
            "scan: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    scan(&state)?;

    // beets, run for real: import without copying or writing, then a title and a play
    // count changed in its database only.
    let beets = work.path().join("beets");
    fs::create_dir_all(&beets)?;
    beet(
        &beets,
        &origin,
        &[
            "import",
            "-A",
            "-C",
            "-W",
            "-q",
            origin.to_str().context("path")?,
        ],
    )?;
    beet(
        &beets,
        &origin,
        &[
            "modify",
            "-y",
            "-W",
            "title:Original flac",
            "title=Beets Title",
            "play_count=7",
        ],
    )?;
    let out = musicfs_ok(
        &state,
        &[
            "import",
            beets.join("library.db").to_str().context("path")?,
            "--fields",
            "title",
        ],
    )?;
    ensure!(
        out.contains("3 entries, 3 matched, 1 tracks with new tag edits, 1 with play counts"),
        "{out}"
    );
    // Only fields asked for become edits.
    let out = musicfs_ok(&state, &["tag", "diff", one.to_str().context("path")?])?;
    ensure!(
        out.contains("*title\tBeets Title\t(was: Original flac)"),
        "{out}"
    );
    ensure!(!out.contains("*artist"), "{out}");

    // iTunes: a generated Library.xml naming the MP3 by URL.
    let xml = work.path().join("Library.xml");
    fs::write(&xml, itunes_xml(&two, "iTunes Title", 3))?;
    let out = musicfs_ok(
        &state,
        &[
            "import",
            xml.to_str().context("path")?,
            "--fields",
            "title,artist",
        ],
    )?;
    ensure!(
        out.contains("1 entries, 1 matched, 1 tracks with new tag edits, 1 with play counts"),
        "{out}"
    );
    let out = musicfs_ok(&state, &["tag", "get", two.to_str().context("path")?])?;
    ensure!(
        out.contains("*title\tiTunes Title") && !out.contains("*artist"),
        "{out}"
    );

    scan(&state)?; // publishes the edits
    let export: Value = serde_json::from_str(&musicfs_ok(&state, &["export"])?)?;
    ensure!(
        plays_of(&export, &one)? == 7 && plays_of(&export, &two)? == 3,
        "{export}"
    );
    ensure!(plays_of(&export, &three)? == 0);
    let want = tree_shape(&state)?;
    ensure!(
        want.iter()
            .any(|(_, p, _)| p.to_string_lossy().contains("Beets Title")),
        "{want:?}"
    );

    // The mount serves the imported edit.
    let mut opts = MountOptions::new([origin.clone()]);
    opts.state_dir = Some(state.clone());
    let mount = MountedFs::start(opts)?;
    let flac = served(&mount, "flac")?;
    ensure!(ffprobe_tags(&flac)?.get("title").map(String::as_str) == Some("Beets Title"));
    drop(mount);

    // export → fresh state → import: the same tree, from JSON and from CSV.
    for format in ["json", "csv"] {
        let file = work.path().join(format!("export.{format}"));
        musicfs_ok(
            &state,
            &[
                "export",
                "--format",
                format,
                "-o",
                file.to_str().context("path")?,
            ],
        )?;
        let fresh = work.path().join(format!("fresh-{format}"));
        scan(&fresh)?;
        musicfs_ok(&fresh, &["import", file.to_str().context("path")?])?;
        scan(&fresh)?;
        let got = tree_shape(&fresh)?;
        ensure!(got == want, "{format} round trip:\n{got:?}\nwant\n{want:?}");
        let again: Value = serde_json::from_str(&musicfs_ok(&fresh, &["export"])?)?;
        ensure!(plays_of(&again, &one)? == 7, "{format}: plays carried over");
    }
    let bad = musicfs(&state, &["import", "/nonexistent/library.db"])?;
    ensure!(!bad.status.success());
    ensure!(checksum_tree(&origin)? == before, "the origin changed");
    Ok(())
}

#[test]
fn an_edit_chosen_by_query_follows_its_track_when_the_source_moves() -> Result<()> {
    let work = tempfile::tempdir()?;
    let origin = work.path().join("origin");
    fs::create_dir_all(&origin)?;
    encode(&origin, "flac", 1)?;
    let mp3 = encode(&origin, "mp3", 2)?;
    let state = work.path().join("state");
    let mut opts = MountOptions::new([origin.clone()]);
    opts.state_dir = Some(state.clone());
    let mount = MountedFs::start(opts)?;
    musicfs_ok(&state, &["refresh"])?;

    let out = musicfs_ok(
        &state,
        &[
            "tag",
            "set",
            "--query",
            "title:\"Original mp3\"",
            "genre=Moved Genre",
        ],
    )?;
    ensure!(out.contains("1 track(s) changed"), "{out}");
    let genre = |ext: &str| -> Result<Option<String>> {
        Ok(ffprobe_tags(&served(&mount, ext)?)?.get("genre").cloned())
    };
    ensure!(genre("mp3")?.as_deref() == Some("Moved Genre"));
    ensure!(genre("flac")?.is_none(), "only the track the query found");
    // A genre edit leaves the track where it is: published as a delta on the served tree.
    ensure!(
        mount
            .log()
            .lines()
            .any(|l| l.contains("tag edits published") && l.contains("delta=true")),
        "{}",
        mount.log()
    );

    // The user moves the file at the origin: the edit goes with its audio.
    fs::create_dir_all(origin.join("moved"))?;
    let moved = origin.join("moved/renamed.mp3");
    fs::rename(&mp3, &moved)?;
    musicfs_ok(&state, &["refresh"])?;
    let out = musicfs_ok(&state, &["tag", "diff", moved.to_str().context("path")?])?;
    ensure!(out.contains("*genre\tMoved Genre"), "{out}");
    ensure!(
        genre("mp3")?.as_deref() == Some("Moved Genre"),
        "{}",
        mount.log()
    );
    ensure!(audio_md5(&served(&mount, "mp3")?)? == audio_md5(&moved)?);
    Ok(())
}
