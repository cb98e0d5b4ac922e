//! Path templates: how a track's tags become `Artist/Album (Year) [FLAC]/03 - Title.flac`.
//!
//! A [`Template`] is parsed once from the configured string and rendered per track. The
//! syntax (documented for users in `docs/TEMPLATES.md`):
//!
//! - `$name` or `${name}` is a variable (see [`Variable`]); `$$`, `{{`, `}}` are a literal
//!   `$`, `{`, `}`.
//! - `{ ... }` is an optional group: it renders only when every variable in it is
//!   non-empty. Groups do not nest and hold no `/`.
//! - `/` separates path components; the template always renders to the same number of
//!   components, whatever the tags.
//!
//! After rendering, each component is tidied (empty `()`/`[]` written in the template are
//! dropped with the space before them, runs of template spaces collapse to one) and then
//! sanitised by [`crate::sanitize`].

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::meta::{Format, TrackRecord};
use crate::sanitize;

mod parse;

use parse::{split_extension, Atom, Component, Parser, Piece};

/// The default layout: `Album Artist/Album (Year) [FLAC]/03 - Title.flac`.
///
/// It is the documented `$artist/$album ($year) [$format_upper]/$track - $title.$format`
/// with albums grouped by album artist (so a compilation stays one folder) and the year
/// and track number made optional.
pub const DEFAULT_TEMPLATE: &str =
    "$albumartist/$album{ ($year)} [$format_upper]/{$track - }$title.$format";

/// Value of `$artist`/`$albumartist` when no artist is tagged.
pub const UNKNOWN_ARTIST: &str = "Unknown Artist";
/// Value of `$album` when no album is tagged.
pub const UNKNOWN_ALBUM: &str = "Unknown Album";
/// Value of `$genre` when no genre is tagged.
pub const UNKNOWN_GENRE: &str = "Unknown Genre";
/// Value of `$title` when neither a title nor a usable file name exists.
pub const UNKNOWN_TITLE: &str = "Unknown Title";
/// Separator between the values of a multi-valued tag.
pub const MULTI_VALUE_SEPARATOR: &str = "; ";

/// Why a template string was rejected. Positions are byte offsets into the template.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// The template is empty or blank.
    #[error("the template is empty")]
    Empty,
    /// A component (between slashes, or before the first/after the last) has no content.
    #[error("empty path component at byte {position} (a leading, trailing or doubled '/')")]
    EmptyComponent {
        /// Where the empty component starts.
        position: usize,
    },
    /// `$name` or `${name}` names no known variable.
    #[error("unknown variable ${name} at byte {position}")]
    UnknownVariable {
        /// The name as written.
        name: String,
        /// Where the `$` is.
        position: usize,
    },
    /// A `$` is followed by neither a name, `{` nor `$`.
    #[error(
        "'$' at byte {position} is not followed by a variable name (write $$ for a literal $)"
    )]
    MissingVariableName {
        /// Where the `$` is.
        position: usize,
    },
    /// `${` has no closing `}`.
    #[error("'${{' at byte {position} has no closing '}}'")]
    UnclosedVariable {
        /// Where the `$` is.
        position: usize,
    },
    /// A `{` opens a group inside another group.
    #[error(
        "nested '{{' at byte {position}: optional groups do not nest (write {{{{ for a literal {{)"
    )]
    NestedGroup {
        /// Where the inner `{` is.
        position: usize,
    },
    /// A group is still open at the end of the template.
    #[error("the '{{' at byte {position} is never closed")]
    UnclosedGroup {
        /// Where the `{` is.
        position: usize,
    },
    /// A `}` closes no group.
    #[error("'}}' at byte {position} closes no group (write }}}} for a literal }})")]
    UnmatchedClose {
        /// Where the `}` is.
        position: usize,
    },
    /// A `/` inside a group, which would make the number of directories depend on tags.
    #[error("'/' at byte {position} is inside an optional group")]
    SlashInGroup {
        /// Where the `/` is.
        position: usize,
    },
}

/// A template variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variable {
    /// `$artist`: the track artist(s), or `Unknown Artist`.
    Artist,
    /// `$album`: the album, or `Unknown Album`.
    Album,
    /// `$albumartist`: the album artist(s), else the artist(s), else `Unknown Artist`.
    AlbumArtist,
    /// `$title`: the title, else the source file's stem.
    Title,
    /// `$track`: the track number, zero-padded (see [`Template`]); empty when untagged.
    Track,
    /// `$disc`: the disc number, padded to the disc total's width; empty when untagged.
    Disc,
    /// `$year`: the first four consecutive digits of the date; empty when none.
    Year,
    /// `$genre`: the genre(s), or `Unknown Genre`.
    Genre,
    /// `$composer`: the composer(s); empty when untagged.
    Composer,
    /// `$format`: the extension, lower case (`flac`).
    Format,
    /// `$format_upper`: the extension, upper case (`FLAC`).
    FormatUpper,
}

impl Variable {
    /// Every variable, in a fixed order.
    pub const ALL: [Variable; 11] = [
        Variable::Artist,
        Variable::Album,
        Variable::AlbumArtist,
        Variable::Title,
        Variable::Track,
        Variable::Disc,
        Variable::Year,
        Variable::Genre,
        Variable::Composer,
        Variable::Format,
        Variable::FormatUpper,
    ];

    /// The name as written after `$`.
    pub fn name(self) -> &'static str {
        match self {
            Variable::Artist => "artist",
            Variable::Album => "album",
            Variable::AlbumArtist => "albumartist",
            Variable::Title => "title",
            Variable::Track => "track",
            Variable::Disc => "disc",
            Variable::Year => "year",
            Variable::Genre => "genre",
            Variable::Composer => "composer",
            Variable::Format => "format",
            Variable::FormatUpper => "format_upper",
        }
    }

    /// The variable called `name` (case-sensitive), if any.
    pub fn from_name(name: &str) -> Option<Variable> {
        Variable::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The value of this variable for `rec`, before tidying and sanitising. Empty means
    /// "absent" (it makes an enclosing optional group vanish).
    pub fn value(self, rec: &TrackRecord) -> Cow<'_, str> {
        let m = &rec.meta;
        match self {
            Variable::Artist => joined(&m.artist).unwrap_or(Cow::Borrowed(UNKNOWN_ARTIST)),
            Variable::AlbumArtist => joined(&m.album_artist)
                .or_else(|| joined(&m.artist))
                .unwrap_or(Cow::Borrowed(UNKNOWN_ARTIST)),
            Variable::Album => single(&m.album).unwrap_or(Cow::Borrowed(UNKNOWN_ALBUM)),
            Variable::Title => single(&m.title).unwrap_or_else(|| stem_title(rec)),
            Variable::Track => number(m.track.as_deref(), m.track_total, 2),
            Variable::Disc => number(m.disc.as_deref(), m.disc_total, 1),
            Variable::Year => Cow::Borrowed(m.date.as_deref().and_then(year).unwrap_or("")),
            Variable::Genre => joined(&m.genre).unwrap_or(Cow::Borrowed(UNKNOWN_GENRE)),
            Variable::Composer => joined(&m.composer).unwrap_or(Cow::Borrowed("")),
            Variable::Format => rec.format_ext(),
            Variable::FormatUpper => match rec.format {
                Format::Other => Cow::Owned(rec.format_ext().to_ascii_uppercase()),
                f => Cow::Borrowed(format_upper(f)),
            },
        }
    }
}

impl fmt::Display for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.name())
    }
}

fn format_upper(f: Format) -> &'static str {
    match f {
        Format::Flac => "FLAC",
        Format::Mp3 => "MP3",
        Format::M4a => "M4A",
        Format::Ogg => "OGG",
        Format::Opus => "OPUS",
        Format::Wav => "WAV",
        Format::Other => "OTHER",
    }
}

/// A trimmed, non-empty single value.
fn single(v: &Option<String>) -> Option<Cow<'_, str>> {
    let t = v.as_deref()?.trim();
    (!t.is_empty()).then_some(Cow::Borrowed(t))
}

/// The non-blank values, trimmed and joined with [`MULTI_VALUE_SEPARATOR`]; `None` when
/// there are none.
fn joined(values: &[String]) -> Option<Cow<'_, str>> {
    let mut parts = values.iter().map(|v| v.trim()).filter(|v| !v.is_empty());
    let first = parts.next()?;
    let Some(second) = parts.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut out = String::with_capacity(first.len() + second.len() + 2);
    out.push_str(first);
    for p in std::iter::once(second).chain(parts) {
        out.push_str(MULTI_VALUE_SEPARATOR);
        out.push_str(p);
    }
    Some(Cow::Owned(out))
}

fn stem_title(rec: &TrackRecord) -> Cow<'static, str> {
    let stem = rec.file_stem();
    let t = stem.trim();
    if t.is_empty() {
        Cow::Borrowed(UNKNOWN_TITLE)
    } else if t.len() == stem.len() {
        Cow::Owned(stem)
    } else {
        Cow::Owned(t.to_owned())
    }
}

/// A track or disc number: digits lose leading zeros and are padded to the larger of
/// `min_width` and the total's digit count; anything else (`A1`, `B-2`) is kept as tagged.
/// A `3/12` that slipped through the scanner still renders as a padded `3`.
fn number(tag: Option<&str>, total: Option<u32>, min_width: usize) -> Cow<'_, str> {
    let Some(raw) = tag.map(str::trim).filter(|t| !t.is_empty()) else {
        return Cow::Borrowed("");
    };
    let (num, inline_total) = match raw.split_once('/') {
        Some((n, t)) if is_digits(n.trim()) && is_digits(t.trim()) => (n.trim(), Some(t.trim())),
        _ => (raw, None),
    };
    if !is_digits(num) {
        return Cow::Borrowed(raw);
    }
    let total_width = match (total, inline_total) {
        (Some(t), _) => digit_count(t),
        (None, Some(t)) => significant(t).len(),
        (None, None) => 0,
    };
    let width = min_width.max(total_width);
    let digits = significant(num);
    if digits.len() >= width {
        return Cow::Borrowed(digits);
    }
    let mut out = String::with_capacity(width);
    out.extend(std::iter::repeat_n('0', width - digits.len()));
    out.push_str(digits);
    Cow::Owned(out)
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `s` (all digits) without leading zeros, `"0"` for zero.
fn significant(s: &str) -> &str {
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        &s[s.len() - 1..]
    } else {
        t
    }
}

fn digit_count(n: u32) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The first four consecutive ASCII digits of a date.
fn year(date: &str) -> Option<&str> {
    let b = date.as_bytes();
    let mut run = 0;
    for (i, c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            run += 1;
            if run == 4 {
                return date.get(i + 1 - 4..=i);
            }
        } else {
            run = 0;
        }
    }
    None
}

/// A parsed path template. Parse with [`Template::parse`] (or `str::parse`), render with
/// [`Template::render`].
///
/// `$track` is padded with zeros to two digits, or to the digit count of the track total
/// when that is wider (`7` of 120 → `007`); `$disc` to the disc total's digit count. Non
/// numeric numbers (`A1`) are kept as tagged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    source: String,
    components: Vec<Component>,
}

impl Template {
    /// Parses a template string.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        if source.trim().is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut components = Parser::new(source).run()?;
        if let Some(last) = components.last_mut() {
            split_extension(last);
        }
        Ok(Template {
            source: source.to_owned(),
            components,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// How many path components every rendering has (directories plus the file name).
    pub fn component_count(&self) -> usize {
        self.components.len()
    }

    /// The variables the template uses, in order of first use.
    pub fn variables(&self) -> Vec<Variable> {
        let mut out = Vec::new();
        let mut add = |v: Variable| {
            if !out.contains(&v) {
                out.push(v);
            }
        };
        for c in &self.components {
            for p in &c.pieces {
                match p {
                    Piece::Atom(Atom::Var(v)) => add(*v),
                    Piece::Group(atoms) => atoms.iter().for_each(|a| {
                        if let Atom::Var(v) = a {
                            add(*v)
                        }
                    }),
                    Piece::Atom(Atom::Text(_)) => {}
                }
            }
            if let Some(v) = c.ext {
                add(v);
            }
        }
        out
    }

    /// Renders the path of `rec`: [`component_count`](Self::component_count) sanitised
    /// components, the last one being the file name. `$format` is the track's own format
    /// everywhere; [`Template::render_in`] makes directories show the album's formats.
    pub fn render(&self, rec: &TrackRecord) -> Vec<String> {
        let mut values = Values::new(rec);
        self.components
            .iter()
            .map(|c| render_component(c, &mut values))
            .collect()
    }

    /// Like [`Template::render`], but in directory components `$format`/`$format_upper`
    /// describe the track's album as `albums` saw it: every format its tracks come in
    /// (`FLAC+MP3`), so an album of mixed formats (a compilation ripped from several
    /// sources) stays one folder. The file name keeps the track's own extension.
    pub fn render_in(&self, rec: &TrackRecord, albums: &AlbumFormats) -> Vec<String> {
        let mixed = albums.mixed_label(rec);
        let mut values = Values::new(rec);
        let last = self.components.len().saturating_sub(1);
        self.components
            .iter()
            .enumerate()
            .map(|(i, c)| {
                match (&mixed, i < last) {
                    (Some((lower, upper)), true) => {
                        values.set(Variable::Format, Cow::Owned(lower.clone()));
                        values.set(Variable::FormatUpper, Cow::Owned(upper.clone()));
                    }
                    (Some(_), false) => {
                        values.reset(Variable::Format);
                        values.reset(Variable::FormatUpper);
                    }
                    (None, _) => {}
                }
                render_component(c, &mut values)
            })
            .collect()
    }
}

/// The formats each album's tracks come in, collected over the whole library before
/// rendering (see [`Template::render_in`]). An album is its album artist and title as
/// rendered (NFC), so it matches the folder the template makes; it is known by the 128-bit
/// hash of those two ([`album_key`]), and counts its tracks per format, so a snapshot can
/// keep the counts and a small change can update them without looking at the rest of the
/// library.
#[derive(Debug, Default, Clone)]
pub struct AlbumFormats {
    counts: std::collections::HashMap<u128, FormatCounts>,
}

/// Tracks of one album per [`Format`], indexed by `Format as usize`.
pub type FormatCounts = [u32; Format::ALL.len()];

impl AlbumFormats {
    /// Counts `rec`'s format towards its album.
    pub fn add(&mut self, rec: &TrackRecord) {
        self.counts.entry(album_key(rec)).or_default()[rec.format as usize] += 1;
    }

    /// Sets the counts of album `key` (as a snapshot recorded them).
    pub fn insert(&mut self, key: u128, counts: FormatCounts) {
        self.counts.insert(key, counts);
    }

    /// The counts of album `key`, if it has any track.
    pub fn get(&self, key: u128) -> Option<&FormatCounts> {
        self.counts.get(&key)
    }

    /// The counts of album `key`, created empty when missing.
    pub fn get_mut(&mut self, key: u128) -> &mut FormatCounts {
        self.counts.entry(key).or_default()
    }

    /// Every album with its counts, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u128, &FormatCounts)> {
        self.counts.iter().map(|(k, c)| (*k, c))
    }

    /// `("flac+mp3", "FLAC+MP3")` when `rec`'s album has tracks in several formats.
    fn mixed_label(&self, rec: &TrackRecord) -> Option<(String, String)> {
        let counts = self.counts.get(&album_key(rec))?;
        if !is_mixed(counts) {
            return None;
        }
        let present: Vec<Format> = Format::ALL
            .into_iter()
            .filter(|f| counts[*f as usize] > 0)
            .collect();
        let join = |name: fn(Format) -> &'static str| {
            present
                .iter()
                .map(|f| name(*f))
                .collect::<Vec<_>>()
                .join("+")
        };
        Some((join(Format::ext), join(format_upper)))
    }
}

/// Whether an album with these counts comes in several formats (and so renders its
/// folders with all of them).
pub fn is_mixed(counts: &FormatCounts) -> bool {
    counts.iter().filter(|&&n| n > 0).count() > 1
}

/// The album `rec` belongs to for [`AlbumFormats`]: the xxh3-128 of its album artist and
/// album as rendered (NFC).
pub fn album_key(rec: &TrackRecord) -> u128 {
    use unicode_normalization::UnicodeNormalization;
    let artist: String = Variable::AlbumArtist.value(rec).nfc().collect();
    let album: String = Variable::Album.value(rec).nfc().collect();
    // Length-prefixed, so ("a", "bc") and ("ab", "c") differ.
    let mut key = Vec::with_capacity(8 + artist.len() + album.len());
    key.extend_from_slice(&(artist.len() as u64).to_le_bytes());
    key.extend_from_slice(artist.as_bytes());
    key.extend_from_slice(album.as_bytes());
    xxhash_rust::xxh3::xxh3_128(&key)
}

impl Template {
    /// Whether a directory component uses `$format`/`$format_upper`, i.e. whether a
    /// track's folder depends on the formats of its whole album ([`Template::render_in`]).
    pub fn folders_show_album_formats(&self) -> bool {
        let last = self.components.len().saturating_sub(1);
        self.components[..last]
            .iter()
            .any(|c| c.uses(Variable::Format) || c.uses(Variable::FormatUpper))
    }
}

impl Default for Template {
    fn default() -> Template {
        Template::parse(DEFAULT_TEMPLATE).unwrap_or_else(|_| unreachable!("default parses"))
    }
}

impl FromStr for Template {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Template, TemplateError> {
        Template::parse(s)
    }
}

impl TryFrom<String> for Template {
    type Error = TemplateError;
    fn try_from(s: String) -> Result<Template, TemplateError> {
        Template::parse(&s)
    }
}

impl From<Template> for String {
    fn from(t: Template) -> String {
        t.source
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Variable values of one record, each computed at most once per render.
struct Values<'a> {
    rec: &'a TrackRecord,
    cache: [Option<Cow<'a, str>>; Variable::ALL.len()],
}

impl<'a> Values<'a> {
    fn new(rec: &'a TrackRecord) -> Values<'a> {
        Values {
            rec,
            cache: Default::default(),
        }
    }

    fn set(&mut self, v: Variable, value: Cow<'a, str>) {
        self.cache[v as usize] = Some(value);
    }

    fn reset(&mut self, v: Variable) {
        self.cache[v as usize] = None;
    }

    fn get(&mut self, v: Variable) -> &str {
        let rec = self.rec;
        self.cache[v as usize].get_or_insert_with(|| v.value(rec))
    }
}

fn render_component(c: &Component, values: &mut Values<'_>) -> String {
    // Sized for the untidied text plus the extension, so the buffer never grows and the
    // sanitiser can hand it back as the name.
    let mut w = Tidy::with_capacity(upper_len(c, values));
    for piece in &c.pieces {
        match piece {
            Piece::Atom(a) => w.atom(a, values),
            Piece::Group(atoms) => {
                let complete = atoms.iter().all(|a| match a {
                    Atom::Var(v) => !values.get(*v).is_empty(),
                    Atom::Text(_) => true,
                });
                if complete {
                    atoms.iter().for_each(|a| w.atom(a, values));
                }
            }
        }
    }
    match c.ext {
        Some(ext) => sanitize::file_name_owned(w.out, values.get(ext)),
        None => sanitize::component_owned(w.out),
    }
}

/// The longest a rendered component can be before sanitising, extension included.
fn upper_len(c: &Component, values: &mut Values<'_>) -> usize {
    let mut atom_len = |a: &Atom| match a {
        Atom::Text(t) => t.len(),
        Atom::Var(v) => values.get(*v).len(),
    };
    let body: usize = c
        .pieces
        .iter()
        .map(|p| match p {
            Piece::Atom(a) => atom_len(a),
            Piece::Group(atoms) => atoms.iter().map(&mut atom_len).sum(),
        })
        .sum();
    body + c.ext.map_or(0, |e| 1 + values.get(e).len())
}

/// Builds a component, tidying the template's own text as it goes: a literal `(`/`[`
/// closed with only literal spaces in between is removed with the spaces before it, and
/// runs of literal spaces collapse. Tag text is never altered, because values are
/// trimmed: a value never ends with a space, so everything after `lit_start` and every
/// trailing space of `out` came from the template.
struct Tidy {
    out: String,
    /// Where the text written since the last value starts.
    lit_start: usize,
}

impl Tidy {
    fn with_capacity(n: usize) -> Tidy {
        Tidy {
            out: String::with_capacity(n),
            lit_start: 0,
        }
    }

    fn atom(&mut self, a: &Atom, values: &mut Values<'_>) {
        match a {
            Atom::Text(t) => self.literal(t),
            Atom::Var(v) => self.value(values.get(*v)),
        }
    }

    fn value(&mut self, v: &str) {
        if !v.is_empty() {
            self.out.push_str(v);
            self.lit_start = self.out.len();
        }
    }

    fn literal(&mut self, text: &str) {
        let mut rest = text;
        while let Some(at) = rest.find([' ', ')', ']']) {
            self.out.push_str(&rest[..at]);
            match rest.as_bytes()[at] {
                b' ' if self.out.ends_with(' ') => {}
                b' ' => self.out.push(' '),
                b')' => self.close(')'),
                _ => self.close(']'),
            }
            rest = &rest[at + 1..];
        }
        self.out.push_str(rest);
    }

    fn close(&mut self, closer: char) {
        let opener = if closer == ')' { '(' } else { '[' };
        let before = self.out.trim_end_matches(' ');
        if before.len() > self.lit_start && before.ends_with(opener) {
            let keep = before[..before.len() - 1].trim_end_matches(' ').len();
            self.out.truncate(keep);
        } else {
            self.out.push(closer);
        }
    }
}

#[cfg(test)]
mod tests;
