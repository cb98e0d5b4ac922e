//! The library of the `remote` scenario, made with ffmpeg: a few dozen real tracks, a
//! third of the bytes in four ~30 MB FLACs of white noise (incompressible, so their size
//! is what crosses the wire), the same noise recording once more on a compilation (the
//! same audio under other tags: what the chunk cache may store once), and MP3 and FLAC
//! tone tracks of a few MB. Made once into a directory and reused while its version
//! matches.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use musicfs_tests::harness::run_ok;

/// Bumped whenever the tracks below change.
const VERSION: &str = "remote-library v1";
/// The marker file holding [`VERSION`] (not part of the library copied to the bucket).
pub const MARKER: &str = ".musicfs-bench-remote";

/// The FLAC whose title is edited upstream in place ("Noise 2" → [`EDITED_TITLE`]).
pub const EDITED: &str = "Noise Artist/Noise Album/02 - Noise 2.flac";
/// Its title before the edit.
pub const EDITED_FROM: &str = "Noise 2";
/// Its title after the edit (same length: the padding keeps the file's size).
pub const EDITED_TITLE: &str = "Nuise 2";
/// The cached file read sequentially.
pub const SEQREAD: &str = "Noise Artist/Noise Album/03 - Noise 3.flac";
/// The recording that is also on the compilation.
const SHARED: &str = "Noise Artist/Noise Album/01 - Noise 1.flac";

/// Noise FLACs of this many seconds: 44.1 kHz stereo 16-bit white noise at 0.9 full
/// scale barely compresses, about 30 MB.
const NOISE_SECONDS: u32 = 170;
const NOISE_TRACKS: u32 = 4;
const MP3_ALBUMS: u32 = 3;
const MP3_PER_ALBUM: u32 = 8;
const FLAC_TONES: u32 = 6;

/// Makes the library in `dir` unless a library of this version is there; `Ok(true)` when
/// it was reused.
pub fn ensure(dir: &Path) -> Result<bool> {
    if fs::read_to_string(dir.join(MARKER)).is_ok_and(|v| v.trim() == VERSION) {
        return Ok(true);
    }
    if !musicfs_tests::fixtures::ffmpeg_available() {
        bail!("ffmpeg is not installed: apt-get install -y ffmpeg");
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    for n in 1..=NOISE_TRACKS {
        noise(dir, n)?;
    }
    compilation_copy(dir)?;
    for a in 1..=MP3_ALBUMS {
        for t in 1..=MP3_PER_ALBUM {
            let i = (a - 1) * MP3_PER_ALBUM + t;
            let rel = format!("Tone Artist {a}/Album {a}/{t:02} - Tone {a}-{t}.mp3");
            let tags = Tags::new(
                &format!("Tone {a}-{t}"),
                &format!("Tone Artist {a}"),
                &format!("Album {a}"),
                t,
            );
            let input = format!(
                "sine=frequency={}:sample_rate=44100:duration={}",
                200 + 17 * i,
                60 + (i * 7) % 60
            );
            encode(
                dir,
                &rel,
                &[&input],
                &["-c:a", "libmp3lame", "-b:a", "192k"],
                &tags,
            )?;
        }
    }
    for t in 1..=FLAC_TONES {
        let rel = format!("Flac Tones/Tone Album/{t:02} - Flac Tone {t}.flac");
        let tags = Tags::new(&format!("Flac Tone {t}"), "Flac Tones", "Tone Album", t);
        let input = format!(
            "sine=frequency={}:sample_rate=44100:duration=40",
            300 + 40 * t
        );
        encode(dir, &rel, &[&input], &["-c:a", "flac"], &tags)?;
    }
    fs::write(dir.join(MARKER), VERSION)?;
    Ok(false)
}

/// The tags every generated track gets.
struct Tags {
    title: String,
    artist: String,
    album: String,
    track: u32,
}

impl Tags {
    fn new(title: &str, artist: &str, album: &str, track: u32) -> Tags {
        Tags {
            title: title.into(),
            artist: artist.into(),
            album: album.into(),
            track,
        }
    }

    fn args(&self) -> Vec<String> {
        [
            format!("title={}", self.title),
            format!("artist={}", self.artist),
            format!("album_artist={}", self.artist),
            format!("album={}", self.album),
            format!("track={}", self.track),
        ]
        .into_iter()
        .flat_map(|kv| ["-metadata".to_string(), kv])
        .collect()
    }
}

/// One ffmpeg run: lavfi `inputs` (two are merged into the left and right channels),
/// `codec`, `tags`, into `dir/rel`.
fn encode(dir: &Path, rel: &str, inputs: &[&str], codec: &[&str], tags: &Tags) -> Result<()> {
    let out = dir.join(rel);
    fs::create_dir_all(out.parent().context("a track has a parent")?)?;
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-y"]);
    for i in inputs {
        cmd.args(["-f", "lavfi", "-i", i]);
    }
    if inputs.len() == 2 {
        cmd.args(["-filter_complex", "[0:a][1:a]amerge=inputs=2"]);
    }
    cmd.args(["-ac", "2"])
        .args(codec)
        .args(tags.args())
        .arg(&out);
    run_ok(&mut cmd).with_context(|| format!("generating {rel}"))?;
    Ok(())
}

/// Noise track `n`: independent seeds per channel and per track, so no two tracks (and
/// no two channels) share audio.
fn noise(dir: &Path, n: u32) -> Result<()> {
    let rel = format!("Noise Artist/Noise Album/{n:02} - Noise {n}.flac");
    let src = |seed: u32| {
        format!("anoisesrc=duration={NOISE_SECONDS}:color=white:sample_rate=44100:amplitude=0.9:seed={seed}")
    };
    let tags = Tags::new(&format!("Noise {n}"), "Noise Artist", "Noise Album", n);
    encode(
        dir,
        &rel,
        &[&src(n), &src(1000 + n)],
        &["-c:a", "flac", "-sample_fmt", "s16"],
        &tags,
    )
}

/// [`SHARED`]'s audio, stream-copied under compilation tags.
fn compilation_copy(dir: &Path) -> Result<()> {
    let rel = "Various Artists/Best Of/01 - Noise 1 (Best Of).flac";
    let out = dir.join(rel);
    fs::create_dir_all(out.parent().context("a track has a parent")?)?;
    let tags = Tags::new("Noise 1 (Best Of)", "Various Artists", "Best Of", 1);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(dir.join(SHARED))
        .args(["-map", "0:a", "-c", "copy", "-map_metadata", "-1"])
        .args(tags.args())
        .arg(&out);
    run_ok(&mut cmd).with_context(|| format!("generating {rel}"))?;
    Ok(())
}
