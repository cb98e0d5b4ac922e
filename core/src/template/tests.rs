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
    for f in Format::ALL.into_iter().filter(|f| *f != Format::Other) {
        r.format = f;
        assert_eq!(Variable::Format.value(&r), f.ext());
        assert_eq!(
            Variable::FormatUpper.value(&r),
            f.ext().to_ascii_uppercase()
        );
    }
}

#[test]
fn plugin_formats_show_the_source_extension() {
    let mut r = rec(TrackMeta::default());
    r.format = Format::Other;
    r.rel_path = b"dir/01 - a.WV".to_vec();
    assert_eq!(Variable::Format.value(&r), "wv");
    assert_eq!(Variable::FormatUpper.value(&r), "WV");
    r.rel_path = b"dir/noext".to_vec();
    assert_eq!(Variable::Format.value(&r), "other");
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
        let suffix = format!(".{}", r.format_ext());
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

#[test]
fn a_mixed_format_album_stays_one_folder_and_keeps_each_extension() {
    let t = Template::default();
    let mut a = rec(full());
    let mut b = rec(TrackMeta {
        title: Some("Something".into()),
        track: Some("2".into()),
        ..full()
    });
    b.format = Format::Mp3;
    let mut albums = AlbumFormats::default();
    albums.add(&a);
    albums.add(&b);
    let pa = t.render_in(&a, &albums);
    let pb = t.render_in(&b, &albums);
    assert_eq!(pa[..2], pb[..2]);
    assert_eq!(pa[1], "Abbey Road (1969) [FLAC+MP3]");
    assert_eq!(pa[2], "01 - Come Together.flac");
    assert_eq!(pb[2], "02 - Something.mp3");
    // A single-format album renders as `render` does.
    a.meta.album = Some("Let It Be".into());
    assert_eq!(t.render_in(&a, &albums), t.render(&a));
}
