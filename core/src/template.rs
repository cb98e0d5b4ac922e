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
            Variable::Format => Cow::Borrowed(rec.format.ext()),
            Variable::FormatUpper => Cow::Borrowed(format_upper(rec.format)),
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

/// Text or a variable inside an optional group.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Atom {
    Text(String),
    Var(Variable),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Atom(Atom),
    /// Renders only if every variable in it is non-empty.
    Group(Vec<Atom>),
}

/// One path component of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Component {
    pieces: Vec<Piece>,
    /// Set on the last component when it ends in `.$format`/`.$format_upper`: that
    /// variable is the extension, kept whole when the name is cut. The `.` is not in
    /// `pieces`.
    ext: Option<Variable>,
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
    /// components, the last one being the file name.
    pub fn render(&self, rec: &TrackRecord) -> Vec<String> {
        let mut values = Values::new(rec);
        self.components
            .iter()
            .map(|c| render_component(c, &mut values))
            .collect()
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

/// If `c` ends with text ending in `.` followed by `$format`/`$format_upper` (outside a
/// group), moves that variable to `c.ext`.
fn split_extension(c: &mut Component) {
    let n = c.pieces.len();
    if n < 2 {
        return;
    }
    let ext = match &c.pieces[n - 1] {
        Piece::Atom(Atom::Var(v @ (Variable::Format | Variable::FormatUpper))) => *v,
        _ => return,
    };
    let Piece::Atom(Atom::Text(text)) = &mut c.pieces[n - 2] else {
        return;
    };
    if !text.ends_with('.') {
        return;
    }
    text.pop();
    let drop_text = text.is_empty();
    c.pieces.truncate(if drop_text { n - 2 } else { n - 1 });
    c.ext = Some(ext);
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

struct Parser<'s> {
    src: &'s str,
    pos: usize,
    components: Vec<Component>,
    pieces: Vec<Piece>,
    component_start: usize,
    /// The open group and where its `{` is.
    group: Option<(Vec<Atom>, usize)>,
}

impl<'s> Parser<'s> {
    fn new(src: &'s str) -> Parser<'s> {
        Parser {
            src,
            pos: 0,
            components: Vec::new(),
            pieces: Vec::new(),
            component_start: 0,
            group: None,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn run(mut self) -> Result<Vec<Component>, TemplateError> {
        while let Some(c) = self.peek() {
            let at = self.pos;
            self.pos += c.len_utf8();
            match c {
                '$' => self.dollar(at)?,
                '{' if self.peek() == Some('{') => self.escaped('{'),
                '}' if self.peek() == Some('}') => self.escaped('}'),
                '{' if self.group.is_some() => {
                    return Err(TemplateError::NestedGroup { position: at })
                }
                '{' => self.group = Some((Vec::new(), at)),
                '}' => match self.group.take() {
                    Some((atoms, _)) => self.pieces.push(Piece::Group(atoms)),
                    None => return Err(TemplateError::UnmatchedClose { position: at }),
                },
                '/' if self.group.is_some() => {
                    return Err(TemplateError::SlashInGroup { position: at })
                }
                '/' => self.end_component(at)?,
                _ => self.text(c),
            }
        }
        if let Some((_, position)) = self.group {
            return Err(TemplateError::UnclosedGroup { position });
        }
        self.end_component(self.src.len())?;
        Ok(self.components)
    }

    fn escaped(&mut self, c: char) {
        self.pos += 1;
        self.text(c);
    }

    fn dollar(&mut self, at: usize) -> Result<(), TemplateError> {
        let rest = &self.src[self.pos..];
        let name = match rest.chars().next() {
            Some('$') => {
                self.pos += 1;
                self.text('$');
                return Ok(());
            }
            Some('{') => {
                let Some(len) = rest.find('}') else {
                    return Err(TemplateError::UnclosedVariable { position: at });
                };
                self.pos += len + 1;
                &rest[1..len]
            }
            _ => {
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if len == 0 {
                    return Err(TemplateError::MissingVariableName { position: at });
                }
                self.pos += len;
                &rest[..len]
            }
        };
        let var = Variable::from_name(name).ok_or_else(|| TemplateError::UnknownVariable {
            name: name.to_owned(),
            position: at,
        })?;
        self.atom(Atom::Var(var));
        Ok(())
    }

    fn text(&mut self, c: char) {
        let atoms_last = match &mut self.group {
            Some((atoms, _)) => atoms.last_mut(),
            None => match self.pieces.last_mut() {
                Some(Piece::Atom(a)) => Some(a),
                _ => None,
            },
        };
        match atoms_last {
            Some(Atom::Text(t)) => t.push(c),
            _ => self.atom(Atom::Text(c.to_string())),
        }
    }

    fn atom(&mut self, a: Atom) {
        match &mut self.group {
            Some((atoms, _)) => atoms.push(a),
            None => self.pieces.push(Piece::Atom(a)),
        }
    }

    fn end_component(&mut self, at: usize) -> Result<(), TemplateError> {
        let pieces = std::mem::take(&mut self.pieces);
        let blank = pieces.iter().all(|p| match p {
            Piece::Atom(Atom::Text(t)) => t.trim().is_empty(),
            _ => false,
        });
        if blank {
            return Err(TemplateError::EmptyComponent {
                position: self.component_start,
            });
        }
        self.components.push(Component { pieces, ext: None });
        self.component_start = at + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{OriginId, ScanState, TrackId, TrackMeta};
    use crate::sanitize::tests::{assert_valid_component, nasty_string};
    use proptest::prelude::*;

    fn rec(meta: TrackMeta) -> TrackRecord {
        TrackRecord {
            id: TrackId(1),
            origin: OriginId(0),
            rel_path: b"Some Dir/01 source name.flac".to_vec(),
            format: Format::Flac,
            scan: ScanState::default(),
            meta,
        }
    }

    fn full() -> TrackMeta {
        TrackMeta {
            title: Some("Come Together".into()),
            artist: vec!["The Beatles".into()],
            album: Some("Abbey Road".into()),
            date: Some("1969-09-26".into()),
            track: Some("1".into()),
            track_total: Some(17),
            genre: vec!["Rock".into()],
            ..TrackMeta::default()
        }
    }

    fn render(t: &str, meta: TrackMeta) -> Vec<String> {
        Template::parse(t).unwrap().render(&rec(meta))
    }

    fn var(v: Variable, meta: TrackMeta) -> String {
        v.value(&rec(meta)).into_owned()
    }

    fn track(n: &str, total: Option<u32>) -> String {
        let meta = TrackMeta {
            track: Some(n.into()),
            track_total: total,
            ..TrackMeta::default()
        };
        var(Variable::Track, meta)
    }

    #[test]
    fn documented_examples_render_as_shown() {
        let acdc = TrackMeta {
            artist: vec!["AC/DC".into()],
            album: Some("Back in Black".into()),
            date: Some("1980-07-25".into()),
            track: Some("6".into()),
            track_total: Some(10),
            title: Some("Back in Black".into()),
            genre: vec!["Rock".into()],
            ..TrackMeta::default()
        };
        let path = |t: &str, m: TrackMeta| render(t, m).join("/");
        let default = "AC\u{2215}DC/Back in Black (1980) [FLAC]/06 - Back in Black.flac";
        assert_eq!(path(DEFAULT_TEMPLATE, acdc.clone()), default);
        assert_eq!(
            path(
                "$artist/$album ($year) [$format_upper]/$track - $title.$format",
                acdc.clone()
            ),
            default
        );
        assert_eq!(
            path(
                "$genre/$albumartist/{$year - }$album/{$disc-}$track $title.$format",
                acdc.clone()
            ),
            "Rock/AC\u{2215}DC/1980 - Back in Black/06 Back in Black.flac"
        );
        assert_eq!(
            path("$artist - $title.$format_upper", acdc.clone()),
            "AC\u{2215}DC - Back in Black.FLAC"
        );
        let no_date = TrackMeta {
            date: None,
            ..acdc.clone()
        };
        assert_eq!(
            path(DEFAULT_TEMPLATE, no_date),
            "AC\u{2215}DC/Back in Black [FLAC]/06 - Back in Black.flac"
        );
        let vinyl = TrackMeta {
            track: Some("A1".into()),
            ..acdc
        };
        assert!(path(DEFAULT_TEMPLATE, vinyl).ends_with("/A1 - Back in Black.flac"));
        let mut untagged = rec(TrackMeta::default());
        untagged.rel_path = b"rips/track07.mp3".to_vec();
        untagged.format = Format::Mp3;
        assert_eq!(
            Template::default().render(&untagged).join("/"),
            "Unknown Artist/Unknown Album [MP3]/track07.mp3"
        );
    }

    #[test]
    fn default_template_renders_the_documented_layout() {
        let out = Template::default().render(&rec(full()));
        assert_eq!(
            out,
            [
                "The Beatles",
                "Abbey Road (1969) [FLAC]",
                "01 - Come Together.flac"
            ]
        );
    }

    #[test]
    fn track_pads_to_two_digits() {
        assert_eq!(track("3", Some(12)), "03");
        assert_eq!(track("3", None), "03");
    }

    #[test]
    fn track_pads_to_the_width_of_a_large_total() {
        assert_eq!(track("7", Some(120)), "007");
        assert_eq!(track("120", Some(120)), "120");
    }

    #[test]
    fn track_with_leading_zeros_or_spaces_normalises() {
        assert_eq!(track("03", Some(12)), "03");
        assert_eq!(track(" 3 ", None), "03");
        assert_eq!(track("0003", None), "03");
        assert_eq!(track("0", None), "00");
        assert_eq!(track("00000000000000000000000000042", Some(7)), "42");
    }

    #[test]
    fn vinyl_track_is_kept_as_tagged() {
        assert_eq!(track("A1", Some(12)), "A1");
        assert_eq!(track(" B-2 ", None), "B-2");
    }

    #[test]
    fn track_with_inline_total_uses_it() {
        assert_eq!(track("3/12", None), "03");
        assert_eq!(track("7/120", None), "007");
    }

    #[test]
    fn missing_track_is_empty_and_drops_its_group() {
        assert_eq!(track("", Some(3)), "");
        let meta = TrackMeta {
            track: None,
            ..full()
        };
        assert_eq!(
            render(DEFAULT_TEMPLATE, meta).last().unwrap(),
            "Come Together.flac"
        );
    }

    #[test]
    fn disc_pads_only_to_the_disc_total_width() {
        let disc = |d: &str, total| {
            var(
                Variable::Disc,
                TrackMeta {
                    disc: Some(d.into()),
                    disc_total: total,
                    ..TrackMeta::default()
                },
            )
        };
        assert_eq!(disc("1", Some(2)), "1");
        assert_eq!(disc("01", None), "1");
        assert_eq!(disc("3", Some(12)), "03");
        assert_eq!(disc("", Some(2)), "");
    }

    #[test]
    fn year_is_the_first_four_consecutive_digits() {
        let y = |d: &str| {
            var(
                Variable::Year,
                TrackMeta {
                    date: Some(d.into()),
                    ..TrackMeta::default()
                },
            )
        };
        assert_eq!(y("1969-10-22"), "1969");
        assert_eq!(y("22/10/1969"), "1969");
        assert_eq!(y("c. 1969"), "1969");
        assert_eq!(y("69"), "");
        assert_eq!(y("unknown"), "");
        assert_eq!(var(Variable::Year, TrackMeta::default()), "");
    }

    #[test]
    fn missing_year_drops_the_parentheses_in_the_default() {
        let meta = TrackMeta {
            date: None,
            ..full()
        };
        assert_eq!(render(DEFAULT_TEMPLATE, meta)[1], "Abbey Road [FLAC]");
    }

    #[test]
    fn missing_year_drops_empty_parentheses_written_without_a_group() {
        let meta = TrackMeta {
            date: Some("n/a".into()),
            ..full()
        };
        assert_eq!(
            render("$album ($year) [$format_upper]/$title.$format", meta)[0],
            "Abbey Road [FLAC]"
        );
    }

    #[test]
    fn empty_pairs_and_space_runs_from_empty_values_are_tidied() {
        let meta = TrackMeta {
            date: None,
            ..full()
        };
        assert_eq!(
            render("$album [($year)]  $composer  x/$title", meta.clone())[0],
            "Abbey Road x"
        );
        assert_eq!(render("($year) $album/$title", meta)[0], "Abbey Road");
    }

    #[test]
    fn tidying_never_alters_tag_text() {
        let meta = TrackMeta {
            title: Some("Untitled ()  [ ] x".into()),
            album: Some("X (".into()),
            date: None,
            ..full()
        };
        let out = render("$album$year)/$title.$format", meta);
        assert_eq!(out, ["X ()", "Untitled ()  [ ] x.flac"]);
    }

    #[test]
    fn compilation_groups_under_album_artist() {
        let track_by = |artist: &str| TrackMeta {
            artist: vec![artist.into()],
            album_artist: vec!["Various Artists".into()],
            album: Some("Now 42".into()),
            ..TrackMeta::default()
        };
        let a = render(DEFAULT_TEMPLATE, track_by("Blur"));
        let b = render(DEFAULT_TEMPLATE, track_by("Oasis"));
        assert_eq!(a[..2], b[..2]);
        assert_eq!(a[0], "Various Artists");
        assert_eq!(var(Variable::Artist, track_by("Blur")), "Blur");
    }

    #[test]
    fn album_artist_falls_back_to_artist_then_unknown() {
        assert_eq!(var(Variable::AlbumArtist, full()), "The Beatles");
        assert_eq!(
            var(Variable::AlbumArtist, TrackMeta::default()),
            UNKNOWN_ARTIST
        );
        let blank = TrackMeta {
            album_artist: vec!["  ".into()],
            artist: vec!["Nico".into()],
            ..TrackMeta::default()
        };
        assert_eq!(var(Variable::AlbumArtist, blank), "Nico");
    }

    #[test]
    fn multi_valued_tags_are_joined_with_semicolons() {
        let meta = TrackMeta {
            artist: vec!["Simon".into(), " ".into(), "Garfunkel ".into()],
            genre: vec!["Folk".into(), "Rock".into()],
            composer: vec!["Paul Simon".into()],
            ..TrackMeta::default()
        };
        assert_eq!(var(Variable::Artist, meta.clone()), "Simon; Garfunkel");
        assert_eq!(var(Variable::Genre, meta.clone()), "Folk; Rock");
        assert_eq!(var(Variable::Composer, meta), "Paul Simon");
    }

    #[test]
    fn missing_fields_get_defaults() {
        let m = TrackMeta::default;
        assert_eq!(var(Variable::Artist, m()), UNKNOWN_ARTIST);
        assert_eq!(var(Variable::Album, m()), UNKNOWN_ALBUM);
        assert_eq!(var(Variable::Genre, m()), UNKNOWN_GENRE);
        assert_eq!(var(Variable::Composer, m()), "");
        assert_eq!(var(Variable::Title, m()), "01 source name");
        assert_eq!(
            render(DEFAULT_TEMPLATE, m()),
            [
                UNKNOWN_ARTIST,
                "Unknown Album [FLAC]",
                "01 source name.flac"
            ]
        );
    }

    #[test]
    fn title_falls_back_to_unknown_when_there_is_no_stem() {
        let mut r = rec(TrackMeta::default());
        r.rel_path = b"dir/ .flac".to_vec();
        assert_eq!(Variable::Title.value(&r), UNKNOWN_TITLE);
    }

    #[test]
    fn format_upper_is_the_extension_in_capitals() {
        let mut r = rec(TrackMeta::default());
        for f in Format::ALL {
            r.format = f;
            assert_eq!(Variable::Format.value(&r), f.ext());
            assert_eq!(
                Variable::FormatUpper.value(&r),
                f.ext().to_ascii_uppercase()
            );
        }
    }

    #[test]
    fn slash_in_a_tag_stays_in_one_component() {
        let meta = TrackMeta {
            artist: vec!["AC/DC".into()],
            ..full()
        };
        let out = render(DEFAULT_TEMPLATE, meta);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], "AC\u{2215}DC");
    }

    #[test]
    fn nfd_and_nfc_tags_render_the_same_path() {
        let with = |name: &str| TrackMeta {
            artist: vec![name.into()],
            album: Some(format!("{name} Live")),
            ..full()
        };
        assert_eq!(
            render(DEFAULT_TEMPLATE, with("Beyonce\u{301}")),
            render(DEFAULT_TEMPLATE, with("Beyonc\u{e9}"))
        );
    }

    #[test]
    fn long_multibyte_title_is_cut_keeping_the_extension() {
        let meta = TrackMeta {
            title: Some("\u{1f3b5}\u{e9}".repeat(50)), // 300 bytes
            ..full()
        };
        let name = render(DEFAULT_TEMPLATE, meta).pop().unwrap();
        assert!(name.len() <= sanitize::MAX_NAME_BYTES, "{}", name.len());
        assert!(name.starts_with("01 - \u{1f3b5}"));
        assert!(name.ends_with("\u{e9}.flac") || name.ends_with("\u{1f3b5}.flac"));
    }

    #[test]
    fn braced_variables_and_escapes() {
        let out = render("${artist}_x $$5 {{a}} {${year}}/$title", full());
        assert_eq!(out[0], "The Beatles_x $5 {a} 1969");
    }

    #[test]
    fn extension_is_only_split_after_a_dot() {
        let t = Template::parse("$title$format").unwrap();
        assert_eq!(t.components[0].ext, None);
        let t = Template::parse("$title.$format_upper").unwrap();
        assert_eq!(t.components[0].ext, Some(Variable::FormatUpper));
        assert_eq!(t.render(&rec(full())), ["Come Together.FLAC"]);
    }

    #[test]
    fn component_count_and_variables() {
        let t = Template::default();
        assert_eq!(t.component_count(), 3);
        assert_eq!(t.as_str(), DEFAULT_TEMPLATE);
        assert_eq!(
            t.variables(),
            [
                Variable::AlbumArtist,
                Variable::Album,
                Variable::Year,
                Variable::FormatUpper,
                Variable::Track,
                Variable::Title,
                Variable::Format
            ]
        );
    }

    #[test]
    fn parse_errors_name_the_problem_and_position() {
        use TemplateError::*;
        let err = |s: &str| Template::parse(s).unwrap_err();
        assert_eq!(err(""), Empty);
        assert_eq!(err("  "), Empty);
        assert_eq!(
            err("$artist/$albun"),
            UnknownVariable {
                name: "albun".into(),
                position: 8
            }
        );
        assert_eq!(
            err("${Artist}"),
            UnknownVariable {
                name: "Artist".into(),
                position: 0
            }
        );
        assert!(err("x $albun").to_string().contains("$albun at byte 2"));
        assert_eq!(err("a/$"), MissingVariableName { position: 2 });
        assert_eq!(err("a $-"), MissingVariableName { position: 2 });
        assert_eq!(err("x ${title"), UnclosedVariable { position: 2 });
        assert_eq!(err("{a {$year}}"), NestedGroup { position: 3 });
        assert_eq!(err("x {$year"), UnclosedGroup { position: 2 });
        assert_eq!(err("x $year}"), UnmatchedClose { position: 7 });
        assert_eq!(err("{$year/x}"), SlashInGroup { position: 6 });
        assert_eq!(err("/$title"), EmptyComponent { position: 0 });
        assert_eq!(err("$artist//$title"), EmptyComponent { position: 8 });
        assert_eq!(err("$artist/ /$title"), EmptyComponent { position: 8 });
        assert_eq!(err("$title/"), EmptyComponent { position: 7 });
    }

    #[test]
    fn serde_round_trips_through_the_source_string() {
        #[derive(Serialize, Deserialize)]
        struct Cfg {
            template: Template,
        }
        let cfg: Cfg = toml::from_str("template = \"$artist/$title.$format\"").unwrap();
        assert_eq!(cfg.template.component_count(), 2);
        assert_eq!(
            toml::to_string(&cfg).unwrap().trim(),
            "template = \"$artist/$title.$format\""
        );
        assert!(toml::from_str::<Cfg>("template = \"$nope\"").is_err());
    }

    const TEMPLATES: &[&str] = &[
        DEFAULT_TEMPLATE,
        "$artist/$album ($year) [$format_upper]/$track - $title.$format",
        "$genre/$albumartist/{$year - }$album/{$disc-}{$track }$title{ ($composer)}.$format",
        "$title",
        "($year)/[$composer]/$title$format",
        "{$composer}/{$disc}/{$year}.$format",
    ];

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        prop::option::of(nasty_string())
    }

    fn strings() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(nasty_string(), 0..3)
    }

    fn meta() -> impl Strategy<Value = TrackMeta> {
        (
            (opt_string(), strings(), opt_string(), strings(), strings()),
            (
                opt_string(),
                prop::option::of(prop_oneof!["[0-9]{1,4}", "[A-D][0-9]", nasty_string()]),
                prop::option::of(any::<u32>()),
                opt_string(),
                prop::option::of(any::<u32>()),
                strings(),
            ),
        )
            .prop_map(
                |(
                    (title, artist, album, album_artist, genre),
                    (date, track, track_total, disc, disc_total, composer),
                )| TrackMeta {
                    title,
                    artist,
                    album,
                    album_artist,
                    genre,
                    date,
                    track,
                    track_total,
                    disc,
                    disc_total,
                    composer,
                    ..TrackMeta::default()
                },
            )
    }

    fn record() -> impl Strategy<Value = TrackRecord> {
        (
            meta(),
            prop::sample::select(Format::ALL.to_vec()),
            prop::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(meta, format, rel_path)| TrackRecord {
                format,
                rel_path,
                ..rec(meta)
            })
    }

    proptest! {
        #[test]
        fn render_gives_valid_components_of_a_fixed_count(
            t in prop::sample::select(TEMPLATES),
            r in record(),
        ) {
            let t = Template::parse(t).unwrap();
            let out = t.render(&r);
            prop_assert_eq!(out.len(), t.component_count());
            for c in &out {
                assert_valid_component(c);
            }
        }

        #[test]
        fn rendered_file_name_keeps_the_extension(r in record()) {
            let out = Template::default().render(&r);
            let name = out.last().unwrap();
            let suffix = format!(".{}", r.format.ext());
            prop_assert!(name.ends_with(&suffix));
        }

        #[test]
        fn parse_never_panics_and_valid_templates_render_valid_paths(
            s in "[$a-z_{}/ ().\\[\\]]{0,40}|\\$[a-z_]{1,13}( \\{\\$[a-z]{3,8}\\})?/\\$title",
            r in record(),
        ) {
            if let Ok(t) = Template::parse(&s) {
                let out = t.render(&r);
                prop_assert_eq!(out.len(), t.component_count());
                for c in &out {
                    assert_valid_component(c);
                }
            }
        }
    }
}
