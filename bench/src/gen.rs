//! Synthetic library generator: a deterministic, realistically shaped tree of small but
//! valid audio files, built by copying one tiny ffmpeg-made template per format and
//! rewriting its tags with lofty. The shape is planned sequentially from the seed (cheap),
//! then files are written in parallel.

use std::collections::HashSet;
use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lofty::config::WriteOptions;
use lofty::tag::{Accessor, ItemKey, ItemValue, Tag, TagExt, TagItem, TagType};
use musicfs_core::Format;
use serde::{Deserialize, Serialize};

/// Name of the marker written once a library is complete; its content keys the library.
pub const MARKER: &str = ".musicfs-bench-library.json";
/// Manifest of every generated track and its tags (tab separated), next to the marker.
pub const MANIFEST: &str = ".musicfs-bench-manifest.tsv";
/// Source path of the large file used for sequential and random reads.
pub const BIG_FILE: &str = "Bench Big/Huge Album/01 - Huge.flac";

/// What a library was generated from; equal keys mean the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryKey {
    /// Number of tracks (the big file not included).
    pub tracks: u64,
    /// Seed of the shape and names.
    pub seed: u64,
    /// Formats, in the order given.
    pub formats: Vec<String>,
    /// Size of the big file in bytes.
    pub big_file_bytes: u64,
    /// Bumped when the generator's output changes.
    pub version: u32,
    /// Tiny tracks ([`TrackSize::Tiny`]); absent from older markers, which were normal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tiny: bool,
}

/// How much audio each generated track holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackSize {
    /// Half a second of audio plus the encoder's padding (about 13 KB a track on average).
    Normal,
    /// A hundredth of a second and no padding: under one 4 KiB block a track (Vorbis, the
    /// largest, is about 4 KB of codebooks), so 1M tracks take about 4 GB on disk. Headers,
    /// stream facts and tags stay valid, so the scanner reads real tags.
    Tiny,
}

impl TrackSize {
    /// The size a library key asks for.
    pub fn of(key: &LibraryKey) -> TrackSize {
        if key.tiny {
            TrackSize::Tiny
        } else {
            TrackSize::Normal
        }
    }

    /// Seconds of audio in the template.
    fn seconds(self) -> &'static str {
        match self {
            TrackSize::Normal => "0.5",
            TrackSize::Tiny => "0.01",
        }
    }

    /// Template cache file name stem.
    fn stem(self) -> &'static str {
        match self {
            TrackSize::Normal => "template",
            TrackSize::Tiny => "template-tiny",
        }
    }

    /// How tags are written: tiny files get no padding after them.
    fn write_options(self) -> WriteOptions {
        match self {
            TrackSize::Normal => WriteOptions::default(),
            TrackSize::Tiny => WriteOptions::default().preferred_padding(0),
        }
    }
}

/// Bumped when the generator output changes, so old libraries are regenerated.
pub const GEN_VERSION: u32 = 2;

/// One planned track.
#[derive(Debug, Clone)]
pub struct TrackPlan {
    /// Path relative to the library root.
    pub rel_path: String,
    /// Container format.
    pub format: Format,
    /// Track title (None: untagged).
    pub title: Option<String>,
    /// Track artists.
    pub artists: Vec<String>,
    /// Album artist (None: untagged).
    pub album_artist: Option<String>,
    /// Album title.
    pub album: Option<String>,
    /// Year.
    pub date: Option<String>,
    /// Track number.
    pub track: Option<u32>,
    /// Track total.
    pub track_total: Option<u32>,
    /// Disc number.
    pub disc: Option<u32>,
    /// Genre.
    pub genre: Option<String>,
}

/// Deterministic splitmix64.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ven", "tor", "sil", "an", "del", "mor", "qui", "zen", "bri", "sto",
    "ne", "val", "dru", "ise", "ok", "lux", "fen", "gar", "hol", "jas", "per", "shi", "tan",
];
const UNICODE_NAMES: &[&str] = &[
    "Björk",
    "Sigur Rós",
    "Beyoncé",
    "坂本龍一",
    "Мумий Тролль",
    "Motörhead",
    "Ólafur Arnalds",
    "東京事変",
    "Zoë Keating",
    "Café Tacvba",
    "Dvořák",
    "Μίκης Θεοδωράκης",
    "صباح فخري",
    "Mötley Crüe",
    "Ñu",
    "Hüsker Dü",
];
const WORDS: &[&str] = &[
    "Love", "Night", "Blue", "Road", "Fire", "Dream", "River", "Light", "Summer", "Echo", "Heart",
    "Stone", "Rain", "Gold", "Ghost", "Wild", "Silence", "Ocean", "Mirror", "Static", "Ámbar",
    "Nuit", "夜", "Сон", "Garden", "Machine", "Paper", "Glass", "Orbit", "Velvet",
];
const GENRES: &[&str] = &[
    "Rock",
    "Jazz",
    "Electronic",
    "Classical",
    "Hip-Hop",
    "Folk",
    "Pop",
    "Ambient",
    "Metal",
];

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn artist_name(rng: &mut Rng) -> String {
    if rng.chance(8) {
        let base = rng.pick(UNICODE_NAMES).to_string();
        return format!("{base} {}", capitalised(rng.pick(SYLLABLES)));
    }
    let words = 1 + rng.below(2);
    let mut parts = Vec::new();
    if rng.chance(15) {
        parts.push("The".to_string());
    }
    for _ in 0..words {
        let syl = 2 + rng.below(2);
        let w: String = (0..syl).map(|_| rng.pick(SYLLABLES)).collect();
        parts.push(capitalised(&w));
    }
    parts.join(" ")
}

fn phrase(rng: &mut Rng, max_words: u64) -> String {
    let n = 1 + rng.below(max_words);
    (0..n)
        .map(|_| rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A name safe as one path component on the source side.
fn src_component(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "_".to_string()
    } else {
        out
    }
}

fn weighted_format(rng: &mut Rng, formats: &[Format]) -> Format {
    let weight = |f: &Format| match f {
        Format::Flac => 45,
        Format::Mp3 => 35,
        Format::M4a => 10,
        _ => 5,
    };
    let total: u64 = formats.iter().map(weight).sum();
    let mut x = rng.below(total);
    for f in formats {
        if x < weight(f) {
            return *f;
        }
        x -= weight(f);
    }
    formats[0]
}

/// Plans `n` tracks: artists with several albums, compilations under "Various Artists",
/// one "Singles" directory with about 1% of tracks, and at 500k tracks or more one
/// "Field Recordings" directory of up to 100k tracks. Unicode and missing fields included.
pub fn plan(n: u64, seed: u64, formats: &[Format]) -> Vec<TrackPlan> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n as usize);
    let singles = if n >= 100 { n / 100 } else { 0 };
    let field = if n >= 500_000 {
        (n / 10).min(100_000)
    } else {
        0
    };
    let mut rest = n - singles - field;
    let big_dir = |out: &mut Vec<TrackPlan>, rng: &mut Rng, dir: &str, album: &str, count: u64| {
        let format = formats[0];
        for i in 0..count {
            let artist = artist_name(rng);
            let title = format!("{} {}", phrase(rng, 3), i + 1);
            out.push(TrackPlan {
                rel_path: format!(
                    "{dir}/{} - {}.{}",
                    src_component(&artist),
                    src_component(&title),
                    format.ext()
                ),
                format,
                title: Some(title),
                artists: vec![artist],
                album_artist: Some(album.to_string()),
                album: Some(album.to_string()),
                date: Some("2020".to_string()),
                track: None,
                track_total: None,
                disc: None,
                genre: Some("Pop".to_string()),
            });
        }
    };
    big_dir(&mut out, &mut rng, "Singles", "Singles", singles);
    big_dir(
        &mut out,
        &mut rng,
        "Field Recordings",
        "Field Recordings",
        field,
    );
    let mut artists_seen = HashSet::new();
    while rest > 0 {
        let compilation = rng.chance(6);
        let artist = if compilation {
            "Various Artists".to_string()
        } else {
            let mut a = artist_name(&mut rng);
            while !artists_seen.insert(a.clone()) {
                a = format!("{a} {}", capitalised(rng.pick(SYLLABLES)));
            }
            a
        };
        let albums = if compilation {
            1
        } else {
            1 + rng.below(4) + if rng.chance(5) { rng.below(30) } else { 0 }
        };
        let mut album_names = HashSet::new();
        for _ in 0..albums {
            if rest == 0 {
                break;
            }
            let mut album = phrase(&mut rng, 4);
            while !album_names.insert(album.clone()) || album == "Singles" {
                album = format!("{album} {}", 2 + rng.below(98));
            }
            if compilation {
                album = format!("{album} Vol. {}", 1 + rng.below(1000));
            }
            let year = 1960 + rng.below(65);
            let len = match rng.below(10) {
                0 => 1 + rng.below(4),
                9 => 18 + rng.below(12),
                _ => 8 + rng.below(9),
            }
            .min(rest);
            let discs = if len >= 18 && rng.chance(50) { 2 } else { 1 };
            let format = weighted_format(&mut rng, formats);
            let missing_album = rng.chance(1);
            let missing_artist = !compilation && rng.chance(1);
            let missing_date = rng.chance(3);
            let genre = rng.pick(GENRES).to_string();
            let dir = format!(
                "{}/{} ({year})",
                src_component(&artist),
                src_component(&album)
            );
            for i in 0..len {
                let per_disc = len.div_ceil(discs);
                let disc = i / per_disc + 1;
                let track = i % per_disc + 1;
                let title = phrase(&mut rng, 4);
                let track_artists = if compilation {
                    let mut v = vec![artist_name(&mut rng)];
                    if rng.chance(10) {
                        v.push(artist_name(&mut rng));
                    }
                    v
                } else if missing_artist {
                    Vec::new()
                } else {
                    vec![artist.clone()]
                };
                let file = format!(
                    "{disc}-{track:02} {}.{}",
                    src_component(&title),
                    format.ext()
                );
                out.push(TrackPlan {
                    rel_path: format!("{dir}/{file}"),
                    format,
                    title: (!rng.chance(1)).then_some(title),
                    artists: track_artists,
                    album_artist: (!missing_artist).then(|| artist.clone()),
                    album: (!missing_album).then(|| album.clone()),
                    date: (!missing_date).then(|| year.to_string()),
                    track: (!rng.chance(2)).then_some(track as u32),
                    track_total: Some(per_disc as u32),
                    disc: (discs > 1).then_some(disc as u32),
                    genre: Some(genre.clone()),
                });
            }
            rest -= len;
        }
    }
    out
}

fn template_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("musicfs-bench").join("templates")
}

/// The small template file for `format` at `size`, made once with ffmpeg and cached.
pub fn template(format: Format, size: TrackSize) -> Result<Vec<u8>> {
    let dir = template_cache_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{}.{}", size.stem(), format.ext()));
    if let Ok(bytes) = fs::read(&path) {
        if !bytes.is_empty() {
            return Ok(bytes);
        }
    }
    let codec: &[&str] = match format {
        Format::Flac => &["-c:a", "flac"],
        Format::Mp3 => &["-c:a", "libmp3lame", "-b:a", "64k"],
        Format::M4a => &["-c:a", "aac", "-b:a", "64k"],
        Format::Ogg => &["-c:a", "libvorbis", "-q:a", "0"],
        Format::Opus => &["-c:a", "libopus", "-b:a", "32k"],
        Format::Wav => &["-c:a", "pcm_s16le"],
        Format::Other => anyhow::bail!("plugin-read formats are not generated"),
    };
    // Named by process and thread: two tests (or two runs) making the same template at
    // once each write their own file and rename it into place, never one another's.
    let tmp = dir.join(format!(
        "{}.tmp-{}-{:?}.{}",
        size.stem(),
        std::process::id(),
        std::thread::current().id(),
        format.ext()
    ));
    let source = format!(
        "sine=frequency=440:duration={}:sample_rate=44100",
        size.seconds()
    );
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .arg("-i")
        .arg(&source)
        .args(["-ac", "2", "-map_metadata", "-1", "-fflags", "+bitexact"])
        .args(codec)
        .arg(&tmp)
        .output()
        .context("cannot run ffmpeg (needed once to make template files)")?;
    if !out.status.success() {
        bail!(
            "ffmpeg failed for {}: {}",
            format.ext(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if format == Format::Flac && size == TrackSize::Tiny {
        // ffmpeg always reserves 8 KiB of PADDING; a tiny file has no room for it.
        let bytes = strip_flac_padding(&fs::read(&tmp)?)?;
        fs::write(&tmp, bytes)?;
    }
    fs::rename(&tmp, &path)?;
    Ok(fs::read(&path)?)
}

/// The FLAC metadata blocks of `flac` as (start, end) byte ranges, the last one last, and
/// where the audio frames start.
fn flac_blocks(flac: &[u8]) -> Result<(Vec<(usize, usize)>, usize)> {
    if flac.len() < 42 || &flac[..4] != b"fLaC" {
        bail!("not a FLAC stream");
    }
    let mut blocks = Vec::new();
    let mut pos = 4usize;
    loop {
        let Some(hdr) = flac.get(pos..pos + 4) else {
            bail!("FLAC metadata is truncated");
        };
        let end = pos + 4 + u32::from_be_bytes([0, hdr[1], hdr[2], hdr[3]]) as usize;
        if end > flac.len() {
            bail!("FLAC metadata block runs past the end");
        }
        blocks.push((pos, end));
        pos = end;
        if hdr[0] & 0x80 != 0 {
            return Ok((blocks, pos));
        }
    }
}

/// `flac` without its PADDING metadata blocks (type 1), the last-block flag moved to the
/// last block kept.
fn strip_flac_padding(flac: &[u8]) -> Result<Vec<u8>> {
    let (blocks, audio) = flac_blocks(flac)?;
    let kept: Vec<(usize, usize)> = blocks
        .into_iter()
        .filter(|&(start, _)| flac[start] & 0x7f != 1)
        .collect();
    let mut out = b"fLaC".to_vec();
    for (i, &(start, end)) in kept.iter().enumerate() {
        let at = out.len();
        out.extend_from_slice(&flac[start..end]);
        out[at] = if i + 1 == kept.len() {
            out[at] | 0x80
        } else {
            out[at] & 0x7f
        };
    }
    out.extend_from_slice(&flac[audio..]);
    Ok(out)
}

fn tag_type(format: Format) -> TagType {
    match format {
        Format::Mp3 => TagType::Id3v2,
        Format::M4a => TagType::Mp4Ilst,
        Format::Wav => TagType::RiffInfo,
        Format::Flac | Format::Ogg | Format::Opus | Format::Other => TagType::VorbisComments,
    }
}

/// The template bytes with `plan`'s tags written in (without padding for tiny tracks).
pub fn tagged_bytes(template: &[u8], plan: &TrackPlan, size: TrackSize) -> Result<Vec<u8>> {
    let mut tag = Tag::new(tag_type(plan.format));
    if let Some(t) = &plan.title {
        tag.set_title(t.clone());
    }
    for a in &plan.artists {
        tag.push(TagItem::new(
            ItemKey::TrackArtist,
            ItemValue::Text(a.clone()),
        ));
    }
    if let Some(a) = &plan.album_artist {
        tag.insert_text(ItemKey::AlbumArtist, a.clone());
    }
    if let Some(a) = &plan.album {
        tag.set_album(a.clone());
    }
    if let Some(d) = &plan.date {
        tag.insert_text(ItemKey::RecordingDate, d.clone());
    }
    if let Some(n) = plan.track {
        tag.set_track(n);
    }
    if let Some(n) = plan.track_total {
        tag.set_track_total(n);
    }
    if let Some(n) = plan.disc {
        tag.set_disk(n);
    }
    if let Some(g) = &plan.genre {
        tag.set_genre(g.clone());
    }
    let mut cur = Cursor::new(template.to_vec());
    tag.save_to(&mut cur, size.write_options())
        .with_context(|| format!("cannot tag {}", plan.rel_path))?;
    Ok(cur.into_inner())
}

/// A FLAC file of about `bytes` bytes: the tagged template with APPLICATION blocks of
/// incompressible filler inserted after its last metadata block (so tag readers that only
/// look at a file's head still find the tags), before the audio frames.
fn big_flac(template: &[u8], bytes: u64, plan: &TrackPlan) -> Result<Vec<u8>> {
    let tagged = tagged_bytes(template, plan, TrackSize::Normal)?;
    if tagged.len() < 42 || &tagged[..4] != b"fLaC" {
        bail!("FLAC template has no STREAMINFO");
    }
    // Walk the metadata blocks to the last one (flag bit 7 of its header byte).
    let mut pos = 4usize;
    let last = loop {
        let Some(hdr) = tagged.get(pos..pos + 4) else {
            bail!("FLAC template metadata is truncated");
        };
        let len = u32::from_be_bytes([0, hdr[1], hdr[2], hdr[3]]) as usize;
        if hdr[0] & 0x80 != 0 {
            break pos;
        }
        pos += 4 + len;
    };
    let hdr = &tagged[last..last + 4];
    let audio = last + 4 + u32::from_be_bytes([0, hdr[1], hdr[2], hdr[3]]) as usize;
    let mut out = Vec::with_capacity(bytes as usize + tagged.len());
    out.extend_from_slice(&tagged[..audio]);
    out[last] &= 0x7f;
    let mut rng = Rng::new(0xb16);
    let mut left = bytes;
    const MAX_BLOCK: u64 = (1 << 24) - 1 - 8;
    while left > 0 {
        let len = left.min(MAX_BLOCK);
        left -= len;
        let body = len + 4;
        out.push(if left == 0 { 0x80 | 2 } else { 2 });
        out.extend_from_slice(&(body as u32).to_be_bytes()[1..]);
        out.extend_from_slice(b"mfsB");
        let start = out.len();
        out.resize(start + len as usize, 0);
        for chunk in out[start..].chunks_mut(8) {
            let r = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
    out.extend_from_slice(&tagged[audio..]);
    Ok(out)
}

/// What a generation run did.
#[derive(Debug, Clone, Serialize)]
pub struct GenReport {
    /// Library root.
    pub dir: PathBuf,
    /// Files written (0 when reused).
    pub files_written: u64,
    /// Whether an existing library was reused.
    pub reused: bool,
    /// Wall time of the generation.
    pub seconds: f64,
    /// Files per second (0 when reused).
    pub files_per_sec: f64,
}

/// Makes sure `dir` holds the library for `key`, generating it when missing or different.
/// Refuses to overwrite a non-empty directory that is not a generated library.
pub fn ensure(dir: &Path, key: &LibraryKey) -> Result<GenReport> {
    let start = Instant::now();
    let marker = dir.join(MARKER);
    if let Ok(text) = fs::read_to_string(&marker) {
        if serde_json::from_str::<LibraryKey>(&text).ok().as_ref() == Some(key) {
            return Ok(GenReport {
                dir: dir.to_path_buf(),
                files_written: 0,
                reused: true,
                seconds: start.elapsed().as_secs_f64(),
                files_per_sec: 0.0,
            });
        }
        tracing::info!(dir = %dir.display(), "library key changed: regenerating");
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    } else if dir.exists() && fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty and holds no generated library ({MARKER} missing): refusing to write there",
            dir.display()
        );
    }
    fs::create_dir_all(dir)?;
    let formats = parse_formats(&key.formats)?;
    let size = TrackSize::of(key);
    let plans = plan(key.tracks, key.seed, &formats);
    let mut templates = Vec::new();
    for f in Format::ALL {
        templates.push(if formats.contains(&f) || f == Format::Flac {
            template(f, size)?
        } else {
            Vec::new()
        });
    }
    let dirs: HashSet<&str> = plans
        .iter()
        .filter_map(|p| p.rel_path.rsplit_once('/').map(|(d, _)| d))
        .collect();
    for d in &dirs {
        fs::create_dir_all(dir.join(d))?;
    }
    write_parallel(dir, &plans, &templates, size)?;
    let big = TrackPlan {
        rel_path: BIG_FILE.to_string(),
        format: Format::Flac,
        title: Some("Huge".into()),
        artists: vec!["Bench Big".into()],
        album_artist: Some("Bench Big".into()),
        album: Some("Huge Album".into()),
        date: Some("2024".into()),
        track: Some(1),
        track_total: Some(1),
        disc: None,
        genre: Some("Noise".into()),
    };
    let big_path = dir.join(BIG_FILE);
    if let Some(parent) = big_path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(
        &big_path,
        big_flac(&templates[0], key.big_file_bytes, &big)?,
    )?;
    write_manifest(dir, &plans)?;
    let files = plans.len() as u64 + 1;
    fs::write(&marker, serde_json::to_string_pretty(key)?)?;
    let secs = start.elapsed().as_secs_f64();
    Ok(GenReport {
        dir: dir.to_path_buf(),
        files_written: files,
        reused: false,
        seconds: secs,
        files_per_sec: files as f64 / secs.max(1e-9),
    })
}

fn write_parallel(
    dir: &Path,
    plans: &[TrackPlan],
    templates: &[Vec<u8>],
    size: TrackSize,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let start = next.fetch_add(256, Ordering::Relaxed);
                        if start >= plans.len() {
                            return Ok(());
                        }
                        for p in &plans[start..(start + 256).min(plans.len())] {
                            let idx = Format::ALL.iter().position(|f| *f == p.format).unwrap_or(0);
                            let bytes = tagged_bytes(&templates[idx], p, size)?;
                            fs::write(dir.join(&p.rel_path), bytes)
                                .with_context(|| format!("cannot write {}", p.rel_path))?;
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
        }
        Ok(())
    })
}

fn write_manifest(dir: &Path, plans: &[TrackPlan]) -> Result<()> {
    let mut w = std::io::BufWriter::new(fs::File::create(dir.join(MANIFEST))?);
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    for p in plans {
        writeln!(
            w,
            "{}\t{}\t{}\t{}\t{}\t{}",
            p.rel_path,
            p.format.ext(),
            clean(p.album_artist.as_deref().unwrap_or("")),
            clean(p.album.as_deref().unwrap_or("")),
            clean(p.title.as_deref().unwrap_or("")),
            clean(&p.artists.join("; ")),
        )?;
    }
    w.flush()?;
    Ok(())
}

/// One manifest line: a track's source path and the tags a tag-organised peer renders.
#[derive(Debug, Clone)]
pub struct ManifestEntry {
    /// Source path relative to the library root.
    pub rel_path: String,
    /// Extension.
    pub ext: String,
    /// Album artist ("" when untagged).
    pub album_artist: String,
    /// Album ("" when untagged).
    pub album: String,
    /// Title ("" when untagged).
    pub title: String,
}

/// Reads the manifest of a generated library.
pub fn read_manifest(dir: &Path) -> Result<Vec<ManifestEntry>> {
    let text = fs::read_to_string(dir.join(MANIFEST)).with_context(|| {
        format!(
            "{} has no {MANIFEST}: not a generated library",
            dir.display()
        )
    })?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 5).then(|| ManifestEntry {
                rel_path: f[0].to_string(),
                ext: f[1].to_string(),
                album_artist: f[2].to_string(),
                album: f[3].to_string(),
                title: f[4].to_string(),
            })
        })
        .collect())
}

/// Parses format names (`flac`, `mp3`, ...).
pub fn parse_formats(names: &[String]) -> Result<Vec<Format>> {
    let mut out = Vec::new();
    for n in names {
        match Format::from_ext(n.trim()) {
            Some(f) if !out.contains(&f) => out.push(f),
            Some(_) => {}
            None => bail!("unknown format {n:?}"),
        }
    }
    if out.is_empty() {
        bail!("no format given");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_deterministic_and_has_the_requested_size() {
        let f = [Format::Flac, Format::Mp3];
        let a = plan(2_000, 7, &f);
        let b = plan(2_000, 7, &f);
        assert_eq!(a.len(), 2_000);
        assert!(a.iter().zip(&b).all(|(x, y)| x.rel_path == y.rel_path));
    }

    #[test]
    fn plan_source_paths_are_unique() {
        let p = plan(20_000, 1, &[Format::Flac, Format::Mp3, Format::Opus]);
        let set: HashSet<&str> = p.iter().map(|t| t.rel_path.as_str()).collect();
        assert_eq!(set.len(), p.len());
    }

    #[test]
    fn plan_has_compilations_singles_and_missing_fields() {
        let p = plan(20_000, 3, &[Format::Flac]);
        assert!(p
            .iter()
            .any(|t| t.album_artist.as_deref() == Some("Various Artists")));
        assert_eq!(
            p.iter()
                .filter(|t| t.rel_path.starts_with("Singles/"))
                .count(),
            200
        );
        assert!(p.iter().any(|t| t.title.is_none()));
        assert!(p.iter().any(|t| t.date.is_none()));
    }

    fn sample_plan(format: Format) -> TrackPlan {
        TrackPlan {
            rel_path: format!("A/B/01 - Tiny.{}", format.ext()),
            format,
            title: Some("Tiny Title".into()),
            artists: vec!["Tiny Artist".into()],
            album_artist: Some("Tiny Album Artist".into()),
            album: Some("Tiny Album".into()),
            date: Some("2001".into()),
            track: Some(3),
            track_total: Some(9),
            disc: None,
            genre: Some("Jazz".into()),
        }
    }

    #[test]
    fn tiny_tracks_are_valid_audio_with_the_requested_tags_in_under_two_blocks() {
        let dir = tempfile::tempdir().unwrap();
        for format in [
            Format::Flac,
            Format::Mp3,
            Format::M4a,
            Format::Ogg,
            Format::Opus,
        ] {
            let plan = sample_plan(format);
            let tiny = tagged_bytes(
                &template(format, TrackSize::Tiny).unwrap(),
                &plan,
                TrackSize::Tiny,
            )
            .unwrap();
            let normal = tagged_bytes(
                &template(format, TrackSize::Normal).unwrap(),
                &plan,
                TrackSize::Normal,
            )
            .unwrap();
            assert!(
                tiny.len() < normal.len(),
                "{format:?}: {} bytes",
                tiny.len()
            );
            assert!(tiny.len() <= 8192, "{format:?}: {} bytes", tiny.len());
            let path = dir.path().join(format!("t.{}", format.ext()));
            fs::write(&path, &tiny).unwrap();
            let (read_format, meta) =
                musicfs_index::tags::read_tags(&path).unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!(read_format, format);
            assert_eq!(meta.title.as_deref(), Some("Tiny Title"), "{format:?}");
            assert_eq!(meta.artist, vec!["Tiny Artist".to_string()], "{format:?}");
            assert_eq!(meta.album.as_deref(), Some("Tiny Album"), "{format:?}");
            assert_eq!(meta.album_artist, vec!["Tiny Album Artist".to_string()]);
            assert_eq!(meta.track.as_deref(), Some("3"), "{format:?}");
            assert!(meta.duration_ms.is_some(), "{format:?}: no stream facts");
        }
    }

    #[test]
    fn stripping_flac_padding_keeps_a_valid_stream_without_padding_blocks() {
        let normal = template(Format::Flac, TrackSize::Normal).unwrap();
        let (blocks, _) = flac_blocks(&normal).unwrap();
        assert!(blocks.iter().any(|&(s, _)| normal[s] & 0x7f == 1));
        let stripped = strip_flac_padding(&normal).unwrap();
        let (kept, audio) = flac_blocks(&stripped).unwrap();
        assert!(kept.iter().all(|&(s, _)| stripped[s] & 0x7f != 1));
        assert_eq!(
            stripped.len() - audio,
            normal.len() - flac_blocks(&normal).unwrap().1
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.flac");
        fs::write(&path, &stripped).unwrap();
        let (format, meta) = musicfs_index::tags::read_tags(&path).unwrap();
        assert_eq!(format, Format::Flac);
        assert!(meta.duration_ms.is_some());
    }

    #[test]
    fn a_library_key_without_tiny_reads_as_normal_and_a_normal_key_writes_no_tiny_field() {
        let old = r#"{"tracks":100000,"seed":1,"formats":["flac"],"big_file_bytes":1,"version":2}"#;
        let key: LibraryKey = serde_json::from_str(old).unwrap();
        assert!(!key.tiny);
        assert_eq!(TrackSize::of(&key), TrackSize::Normal);
        assert!(!serde_json::to_string(&key).unwrap().contains("tiny"));
        let tiny = LibraryKey { tiny: true, ..key };
        assert!(serde_json::to_string(&tiny)
            .unwrap()
            .contains("\"tiny\":true"));
    }
}
