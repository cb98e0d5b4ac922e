//! A small music library in every format MusicFS reads, generated with ffmpeg at test time,
//! with the tag values each file must yield and the broken files a scan must skip.
//!
//! Layout under `Fixture::root` (paths relative to it):
//! - `flac/Artist One/Album A/03 - Flac Song.flac`: `3/12`, disc `1/2`, composer, lyrics and
//!   an embedded PNG cover; `cover.jpg` and `notes.txt` beside it are not tracks (the mount
//!   shows them in the album's folder).
//! - `mp3/`: ID3v2.3 (whose ID3v1 block is patched to disagree on the title and to add a
//!   genre the ID3v2 tag lacks), ID3v2.4 with CJK tags and file name, ID3v1 only.
//! - `m4a/`, `ogg/` (NFC "Beyoncé", vinyl track `A1`), `opus/` (NFD "Beyoncé"), `wav/`
//!   (RIFF INFO), `comp/` (a compilation), `misc/` (no tags; title only), `dup/` (two files
//!   whose tags collide, distinct audio), `multi/` (a FLAC with two ARTIST and two GENRE comments and a
//!   separate TRACKTOTAL).
//! - `broken/`: empty, truncated, random, text-as-m4a and FLAC-named-mp3 files.
//! - `links/`: a symlink to a good file inside the origin (cataloged, and shown once with
//!   its target: the same track), a dangling
//!   symlink, a loop back to the root, and a symlink to a file outside the origin.

use std::collections::VecDeque;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use musicfs_core::{Format, TrackMeta};

/// One good file and what a tag reader must find in it.
#[derive(Debug, Clone)]
pub struct ExpectedTrack {
    /// Path relative to the fixture root.
    pub rel_path: PathBuf,
    /// Container format.
    pub format: Format,
    /// Expected tags. Stream facts: `sample_rate` and `channels` are exact, `duration_ms` is
    /// the nominal length (1000 ms; compare with a tolerance), `bitrate` is left `None`.
    pub meta: TrackMeta,
}

/// A file a scan must skip, with what is wrong with it.
#[derive(Debug, Clone)]
pub struct BrokenFile {
    /// Path relative to the fixture root.
    pub rel_path: PathBuf,
    /// What was done to it.
    pub what: &'static str,
}

/// The generated library.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The origin root to scan.
    pub root: PathBuf,
    /// A directory next to the root (not inside it) holding the target of `links/outside.flac`.
    pub outside: PathBuf,
    /// Every good audio file, including `links/inside.flac`.
    pub tracks: Vec<ExpectedTrack>,
    /// Files with audio extensions that cannot be read.
    pub broken: Vec<BrokenFile>,
    /// Non-audio files a scan must not report at all.
    pub ignored: Vec<PathBuf>,
    /// Symlinks a scan must skip and report: dangling, loop, outside the origin.
    pub bad_links: Vec<PathBuf>,
}

impl Fixture {
    /// The expected track at `rel` (relative to the root).
    pub fn track(&self, rel: impl AsRef<Path>) -> Option<&ExpectedTrack> {
        self.tracks.iter().find(|t| t.rel_path == rel.as_ref())
    }
}

/// Is an `ffmpeg` binary on `PATH`?
pub fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// MD5 of the decoded audio of `path` (`ffmpeg -i F -map 0:a -f md5 -`), as lowercase hex:
/// equal for two files with the same audio whatever their tags.
pub fn audio_md5(path: &Path) -> Result<String> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:a", "-f", "md5", "-"])
        .output()
        .context("running ffmpeg")?;
    if !out.status.success() {
        bail!(
            "ffmpeg md5 of {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("MD5=")
        .map(str::to_owned)
        .with_context(|| format!("unexpected ffmpeg md5 output {text:?}"))
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn v(vs: &[&str]) -> Vec<String> {
    vs.iter().map(|x| x.to_string()).collect()
}

/// One ffmpeg encode of a 1 s sine.
struct Encode {
    rel: String,
    codec: &'static [&'static str],
    tags: Vec<(&'static str, String)>,
    /// Extra inputs/options placed after the tags (cover art).
    extra: Vec<String>,
    /// Add the lavfi cover image as a second input.
    with_cover: bool,
    /// The sine's frequency: files meant as distinct tracks whose tags could agree need
    /// distinct audio, or the mount shows them once (as copies of one track).
    freq: u32,
}

const FLAC: &[&str] = &["-c:a", "flac"];
const MP3_V23_V1: &[&str] = &[
    "-c:a",
    "libmp3lame",
    "-b:a",
    "128k",
    "-id3v2_version",
    "3",
    "-write_id3v1",
    "1",
];
const MP3_V24: &[&str] = &["-c:a", "libmp3lame", "-b:a", "128k", "-id3v2_version", "4"];
const M4A: &[&str] = &["-c:a", "aac", "-b:a", "96k"];
const OGG: &[&str] = &["-c:a", "libvorbis", "-q:a", "2"];
const OPUS: &[&str] = &["-c:a", "libopus", "-b:a", "64k"];
const WAV: &[&str] = &["-c:a", "pcm_s16le"];

impl Encode {
    fn new(rel: &str, codec: &'static [&'static str], tags: &[(&'static str, &str)]) -> Self {
        Encode {
            rel: rel.to_owned(),
            codec,
            tags: tags.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            extra: Vec::new(),
            with_cover: false,
            freq: 440,
        }
    }

    fn with_freq(mut self, freq: u32) -> Self {
        self.freq = freq;
        self
    }

    fn run(&self, root: &Path, cover: &Path) -> Result<()> {
        let out = root.join(&self.rel);
        if let Some(dir) = out.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!(
                "sine=frequency={}:duration=1:sample_rate=44100",
                self.freq
            ));
        if self.with_cover {
            cmd.arg("-i").arg(cover);
            cmd.args(["-map", "0:a", "-map", "1:v", "-c:v", "copy"]);
            cmd.args(["-disposition:v", "attached_pic"]);
        }
        cmd.args(["-ac", "2", "-map_metadata", "-1", "-fflags", "+bitexact"]);
        cmd.args(self.codec);
        for (k, val) in &self.tags {
            cmd.arg("-metadata").arg(format!("{k}={val}"));
        }
        cmd.args(&self.extra);
        cmd.arg(&out);
        run(cmd, &self.rel)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning ffmpeg for {what}"))?;
    if !out.status.success() {
        bail!(
            "ffmpeg failed for {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs jobs on a few threads; ffmpeg processes dominate, so more threads than cores helps.
fn run_parallel<'a>(jobs: Vec<Box<dyn FnOnce() -> Result<()> + Send + 'a>>) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
        * 2;
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<_>>());
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let job = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(_) => None,
                };
                let Some(job) = job else { break };
                if let Err(e) = job() {
                    if let Ok(mut errs) = errors.lock() {
                        errs.push(e);
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_default();
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Generates the fixture library under `dir` (which should be empty): root `dir/library`,
/// outside target `dir/outside`. Fails with a clear message when ffmpeg is missing.
pub fn build_fixture_library(dir: &Path) -> Result<Fixture> {
    if !ffmpeg_available() {
        bail!("ffmpeg is not installed (or not on PATH): the fixture library needs it to generate audio files; install it (apt-get install ffmpeg)");
    }
    let root = dir.join("library");
    let outside = dir.join("outside");
    fs::create_dir_all(&root)?;
    fs::create_dir_all(&outside)?;
    let cover = dir.join("cover.png");

    let (encodes, mut tracks) = good_files();
    let mut phase1: Vec<Box<dyn FnOnce() -> Result<()> + Send + '_>> = Vec::new();
    {
        let cover = cover.clone();
        phase1.push(Box::new(move || {
            let mut cmd = Command::new("ffmpeg");
            cmd.args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
                .arg("color=c=0x3366cc:s=64x64:d=1")
                .args(["-frames:v", "1", "-c:v", "png"])
                .arg(&cover);
            run(cmd, "cover.png")
        }));
    }
    let mut phase2: Vec<Box<dyn FnOnce() -> Result<()> + Send + '_>> = Vec::new();
    for e in encodes {
        let root = root.clone();
        let cover = cover.clone();
        if e.with_cover {
            phase2.push(Box::new(move || e.run(&root, &cover)));
        } else {
            phase1.push(Box::new(move || e.run(&root, &cover)));
        }
    }
    {
        let outside = outside.clone();
        let cover = cover.clone();
        phase1.push(Box::new(move || {
            Encode::new("outside.flac", FLAC, &[("title", "Outside")]).run(&outside, &cover)
        }));
    }
    run_parallel(phase1)?;
    run_parallel(phase2)?;

    patch_id3v1(&root.join("mp3/v23 - Two Tags.mp3"))?;
    strip_id3v2(&root.join("mp3/v1 only.mp3"))?;
    write_vorbis_comments(
        &root.join("multi/Alpha & Beta.flac"),
        &[
            ("TITLE", "Together"),
            ("ARTIST", "Alpha"),
            ("ARTIST", "Beta"),
            ("ALBUM", "Duets"),
            ("GENRE", "Jazz"),
            ("GENRE", "Funk"),
            ("DATE", "1975"),
            ("TRACKNUMBER", "2"),
            ("TRACKTOTAL", "8"),
            ("DISCNUMBER", "1"),
            ("DISCTOTAL", "2"),
        ],
    )?;

    // Non-audio files and decoys.
    let album = root.join("flac/Artist One/Album A");
    fs::write(album.join("cover.jpg"), jpeg_like_bytes())?;
    fs::write(album.join("notes.txt"), "ripped with love\n")?;
    let ignored = vec![
        PathBuf::from("flac/Artist One/Album A/cover.jpg"),
        PathBuf::from("flac/Artist One/Album A/notes.txt"),
    ];

    let broken = broken_files(&root)?;

    // Symlinks.
    let links = root.join("links");
    fs::create_dir_all(&links)?;
    symlink(
        "../flac/Artist One/Album A/03 - Flac Song.flac",
        links.join("inside.flac"),
    )?;
    symlink("does-not-exist.mp3", links.join("dangling.mp3"))?;
    symlink("..", links.join("loop"))?;
    symlink(outside.join("outside.flac"), links.join("outside.flac"))?;
    let bad_links = vec![
        PathBuf::from("links/dangling.mp3"),
        PathBuf::from("links/loop"),
        PathBuf::from("links/outside.flac"),
    ];
    let linked = tracks
        .iter()
        .find(|t| t.rel_path == Path::new("flac/Artist One/Album A/03 - Flac Song.flac"))
        .cloned()
        .context("the linked track is in the spec")?;
    tracks.push(ExpectedTrack {
        rel_path: PathBuf::from("links/inside.flac"),
        ..linked
    });

    Ok(Fixture {
        root,
        outside,
        tracks,
        broken,
        ignored,
        bad_links,
    })
}

fn stream(format: Format, mut meta: TrackMeta) -> TrackMeta {
    meta.sample_rate = Some(if format == Format::Opus { 48000 } else { 44100 });
    meta.channels = Some(2);
    meta.duration_ms = Some(1000);
    meta
}

fn good_files() -> (Vec<Encode>, Vec<ExpectedTrack>) {
    let mut encodes = Vec::new();
    let mut tracks = Vec::new();
    let mut add = |e: Encode, format: Format, meta: TrackMeta| {
        tracks.push(ExpectedTrack {
            rel_path: PathBuf::from(&e.rel),
            format,
            meta: stream(format, meta),
        });
        encodes.push(e);
    };

    let mut e = Encode::new(
        "flac/Artist One/Album A/03 - Flac Song.flac",
        FLAC,
        &[
            ("title", "Flac Song"),
            ("artist", "Artist One"),
            ("album", "Album A"),
            ("album_artist", "Artist One"),
            ("genre", "Rock"),
            ("date", "2001-05-03"),
            ("track", "3/12"),
            ("disc", "1/2"),
            ("composer", "Jane Composer"),
            ("lyrics", "la la la\nsecond line"),
        ],
    );
    e.with_cover = true;
    add(
        e,
        Format::Flac,
        TrackMeta {
            title: s("Flac Song"),
            artist: v(&["Artist One"]),
            album: s("Album A"),
            album_artist: v(&["Artist One"]),
            genre: v(&["Rock"]),
            date: s("2001-05-03"),
            track: s("3"),
            track_total: Some(12),
            disc: s("1"),
            disc_total: Some(2),
            composer: v(&["Jane Composer"]),
            lyrics: s("la la la\nsecond line"),
            has_art: true,
            ..Default::default()
        },
    );

    add(
        Encode::new(
            "mp3/v23 - Two Tags.mp3",
            MP3_V23_V1,
            &[
                ("title", "Version Two Three"),
                ("artist", "Mp3 Artist"),
                ("album", "Mp3 Album"),
                ("date", "1999"),
                ("track", "5/10"),
            ],
        ),
        Format::Mp3,
        TrackMeta {
            title: s("Version Two Three"),
            artist: v(&["Mp3 Artist"]),
            album: s("Mp3 Album"),
            date: s("1999"),
            track: s("5"),
            track_total: Some(10),
            // Only in the (patched) ID3v1 block.
            genre: v(&["Rock"]),
            ..Default::default()
        },
    );

    add(
        Encode::new(
            "mp3/森の人.mp3",
            MP3_V24,
            &[
                ("title", "森の人"),
                ("artist", "坂本龍一"),
                ("album", "音楽図鑑"),
                ("date", "1984"),
                ("track", "7"),
            ],
        ),
        Format::Mp3,
        TrackMeta {
            title: s("森の人"),
            artist: v(&["坂本龍一"]),
            album: s("音楽図鑑"),
            date: s("1984"),
            track: s("7"),
            ..Default::default()
        },
    );

    add(
        Encode::new(
            "mp3/v1 only.mp3",
            MP3_V23_V1,
            &[
                ("title", "Old School"),
                ("artist", "V1 Artist"),
                ("album", "V1 Album"),
                ("date", "1985"),
                ("track", "4"),
                ("genre", "Blues"),
            ],
        ),
        Format::Mp3,
        TrackMeta {
            title: s("Old School"),
            artist: v(&["V1 Artist"]),
            album: s("V1 Album"),
            date: s("1985"),
            track: s("4"),
            genre: v(&["Blues"]),
            ..Default::default()
        },
    );

    add(
        Encode::new(
            "m4a/Aac Song.m4a",
            M4A,
            &[
                ("title", "Aac Song"),
                ("artist", "M4a Artist"),
                ("album", "M4a Album"),
                ("album_artist", "M4a Band"),
                ("genre", "Pop"),
                ("date", "2010"),
                ("track", "2/9"),
                ("disc", "1/1"),
            ],
        ),
        Format::M4a,
        TrackMeta {
            title: s("Aac Song"),
            artist: v(&["M4a Artist"]),
            album: s("M4a Album"),
            album_artist: v(&["M4a Band"]),
            genre: v(&["Pop"]),
            date: s("2010"),
            track: s("2"),
            track_total: Some(9),
            disc: s("1"),
            disc_total: Some(1),
            ..Default::default()
        },
    );

    add(
        Encode::new(
            "ogg/Beyoncé - Halo.ogg",
            OGG,
            &[
                ("title", "Halo"),
                ("artist", "Beyoncé"),
                ("album", "I Am... Sasha Fierce"),
                ("date", "2008"),
                ("track", "A1"),
            ],
        ),
        Format::Ogg,
        TrackMeta {
            title: s("Halo"),
            artist: v(&["Beyoncé"]),
            album: s("I Am... Sasha Fierce"),
            date: s("2008"),
            track: s("A1"),
            ..Default::default()
        },
    );

    add(
        Encode::new(
            "opus/Beyonce\u{301} - Halo.opus",
            OPUS,
            &[
                ("title", "Halo (Opus)"),
                ("artist", "Beyonce\u{301}"),
                ("album", "I Am... Sasha Fierce"),
                ("date", "2008"),
                ("track", "2"),
            ],
        ),
        Format::Opus,
        TrackMeta {
            title: s("Halo (Opus)"),
            artist: v(&["Beyonce\u{301}"]),
            album: s("I Am... Sasha Fierce"),
            date: s("2008"),
            track: s("2"),
            ..Default::default()
        },
    );

    add(
        Encode::new(
            "wav/Riff Song.wav",
            WAV,
            &[
                ("title", "Riff Song"),
                ("artist", "Wav Artist"),
                ("album", "Wav Album"),
                ("genre", "Ambient"),
                ("date", "2015"),
                ("track", "6"),
            ],
        ),
        Format::Wav,
        TrackMeta {
            title: s("Riff Song"),
            artist: v(&["Wav Artist"]),
            album: s("Wav Album"),
            genre: v(&["Ambient"]),
            date: s("2015"),
            track: s("6"),
            ..Default::default()
        },
    );

    for (rel, codec, format, artist, track) in [
        (
            "comp/01 - Singer X.flac",
            FLAC,
            Format::Flac,
            "Singer X",
            "1",
        ),
        (
            "comp/02 - Singer Y.mp3",
            MP3_V24,
            Format::Mp3,
            "Singer Y",
            "2",
        ),
    ] {
        add(
            Encode::new(
                rel,
                codec,
                &[
                    ("title", &format!("Hit by {artist}")),
                    ("artist", artist),
                    ("album", "Hits Compilation"),
                    ("album_artist", "Various Artists"),
                    ("date", "2005"),
                    ("track", track),
                ],
            ),
            format,
            TrackMeta {
                title: Some(format!("Hit by {artist}")),
                artist: v(&[artist]),
                album: s("Hits Compilation"),
                album_artist: v(&["Various Artists"]),
                date: s("2005"),
                track: s(track),
                ..Default::default()
            },
        );
    }

    add(
        Encode::new("misc/No Tags Here.flac", FLAC, &[]).with_freq(523),
        Format::Flac,
        TrackMeta::default(),
    );
    add(
        Encode::new(
            "misc/deeper/nested/title only.ogg",
            OGG,
            &[("title", "Lonely Title")],
        ),
        Format::Ogg,
        TrackMeta {
            title: s("Lonely Title"),
            ..Default::default()
        },
    );

    for (rel, freq) in [("dup/take1.flac", 440), ("dup/take2.flac", 660)] {
        add(
            Encode::new(
                rel,
                FLAC,
                &[
                    ("title", "Same Song"),
                    ("artist", "Collide"),
                    ("album", "Same Album"),
                    ("date", "2020"),
                    ("track", "1"),
                ],
            )
            .with_freq(freq),
            Format::Flac,
            TrackMeta {
                title: s("Same Song"),
                artist: v(&["Collide"]),
                album: s("Same Album"),
                date: s("2020"),
                track: s("1"),
                ..Default::default()
            },
        );
    }

    // Encoded bare; the Vorbis comment block is written afterwards (ffmpeg cannot repeat a key).
    add(
        Encode::new("multi/Alpha & Beta.flac", FLAC, &[]),
        Format::Flac,
        TrackMeta {
            title: s("Together"),
            artist: v(&["Alpha", "Beta"]),
            album: s("Duets"),
            genre: v(&["Jazz", "Funk"]),
            date: s("1975"),
            track: s("2"),
            track_total: Some(8),
            disc: s("1"),
            disc_total: Some(2),
            ..Default::default()
        },
    );

    (encodes, tracks)
}

fn broken_files(root: &Path) -> Result<Vec<BrokenFile>> {
    let dir = root.join("broken");
    fs::create_dir_all(&dir)?;
    let good_flac = fs::read(root.join("flac/Artist One/Album A/03 - Flac Song.flac"))?;
    let good_mp3 = fs::read(root.join("mp3/森の人.mp3"))?;
    let mut random = Vec::with_capacity(4096);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while random.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        random.extend_from_slice(&x.to_le_bytes());
    }
    let files: [(&str, Vec<u8>, &'static str); 6] = [
        ("empty.flac", Vec::new(), "zero bytes"),
        (
            "truncated.flac",
            good_flac[..100].to_vec(),
            "first 100 bytes of a FLAC",
        ),
        (
            "truncated.mp3",
            good_mp3[..100].to_vec(),
            "first 100 bytes of an MP3",
        ),
        ("random.ogg", random, "4 KiB of pseudo-random bytes"),
        (
            "text.m4a",
            "this is a plain text file, not an mp4 container\n"
                .repeat(20)
                .into_bytes(),
            "a text file",
        ),
        ("really a flac.mp3", good_flac, "a FLAC file named .mp3"),
    ];
    let mut out = Vec::new();
    for (name, bytes, what) in files {
        fs::write(dir.join(name), bytes)?;
        out.push(BrokenFile {
            rel_path: PathBuf::from("broken").join(name),
            what,
        });
    }
    Ok(out)
}

/// Not a real JPEG: the scanner must ignore it by extension without looking inside.
fn jpeg_like_bytes() -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0];
    b.extend_from_slice(b"JFIF not really");
    b
}

/// Makes the ID3v1 block of an MP3 disagree with its ID3v2 tag: a different title (ID3v2
/// must win) and a genre (Rock, 17) the ID3v2 tag does not have (ID3v1 must fill it).
fn patch_id3v1(path: &Path) -> Result<()> {
    let mut bytes = fs::read(path)?;
    let len = bytes.len();
    if len < 128 || &bytes[len - 128..len - 125] != b"TAG" {
        bail!("{} has no ID3v1 block to patch", path.display());
    }
    let tag = &mut bytes[len - 128..];
    let title = b"Old V1 Title";
    tag[3..33].fill(0);
    tag[3..3 + title.len()].copy_from_slice(title);
    tag[127] = 17;
    fs::write(path, bytes)?;
    Ok(())
}

/// Removes the leading ID3v2 tag of an MP3, leaving only its ID3v1 block. ffmpeg 5.1 writes
/// no ID3v1 at all when asked for `-id3v2_version 0`, so the ID3v1-only file is made this way.
fn strip_id3v2(path: &Path) -> Result<()> {
    let bytes = fs::read(path)?;
    if bytes.len() < 10 || &bytes[..3] != b"ID3" {
        bail!("{} has no ID3v2 tag to strip", path.display());
    }
    // The size is a 28-bit "syncsafe" integer (7 bits per byte); a footer adds 10 bytes.
    let size = bytes[6..10]
        .iter()
        .fold(0usize, |acc, b| (acc << 7) | usize::from(b & 0x7f));
    let footer = if bytes[5] & 0x10 != 0 { 10 } else { 0 };
    let end = 10 + size + footer;
    let audio = bytes
        .get(end..)
        .with_context(|| format!("{}: ID3v2 size runs past the end", path.display()))?;
    fs::write(path, audio)?;
    Ok(())
}

/// Replaces a FLAC file's Vorbis comment block with `comments` (keys may repeat).
fn write_vorbis_comments(path: &Path, comments: &[(&str, &str)]) -> Result<()> {
    let bytes = fs::read(path)?;
    let out = crate::harness::flac_with_comments(&bytes, comments)
        .with_context(|| format!("{}", path.display()))?;
    fs::write(path, out)?;
    Ok(())
}
