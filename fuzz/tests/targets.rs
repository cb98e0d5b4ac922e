//! The fuzz targets (see the crate documentation). Each must never panic.

use std::sync::Arc;

use musicfs_core::config::Config;
use musicfs_core::overlay::parse_assignments;
use musicfs_core::template::Template;
use musicfs_core::Format;
use musicfs_fuzz::{mutated, Bytes};
use proptest::prelude::*;

const ALL: &[&str] = &[];

fn format_of(name: &str) -> Option<Format> {
    Format::from_ext(name.rsplit('.').next()?)
}

proptest! {
    /// Every tag reader (FLAC, ID3v1/v2.3/v2.4, MP4 atoms, Vorbis and Opus comments, RIFF),
    /// each seed read as what its extension says and as every other format.
    #[test]
    fn fuzz_tag_readers((name, input) in mutated(ALL), pick in 0usize..7) {
        let expected = match pick {
            0 => format_of(&name),
            n => Format::ALL.get(n - 1).copied(),
        };
        let source = Arc::new(Bytes(input));
        let _ = musicfs_index::read_tags_from(source.clone(), expected);
        let _ = musicfs_index::read_track_identity(source, expected);
    }

    /// The overlay's tag synthesiser: a mutated file re-tagged.
    #[test]
    fn fuzz_overlay_synthesiser((name, input) in mutated(ALL), title in "\\PC{0,40}") {
        let Some(format) = format_of(&name) else { return Ok(()) };
        let Ok(edits) = parse_assignments(&[format!("title={title}"), "albumartist=X".into()]) else {
            return Ok(());
        };
        let source = Bytes(input);
        if let Ok(b) = musicfs_index::overlay::synthesise(format, &source, &edits) {
            let _ = b;
        }
    }

    /// The snapshot loader, on a mutated snapshot file (and on the original).
    #[test]
    fn fuzz_snapshot_loader(ms in prop::collection::vec(musicfs_fuzz::mutation(), 0..6)) {
        let mut bytes = snapshot_seed();
        for m in &ms {
            musicfs_fuzz::apply(&mut bytes, m);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tree.snap");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(s) = musicfs_core::snapshot::Snapshot::open(&path) {
            // A snapshot that opens is walked whole (a damaged one must not loop or panic).
            let _ = s.walk();
        }
        let _ = musicfs_core::snapshot::Snapshot::open_verified(&path);
    }

    /// The configuration parser and its checks, on random text and mutated valid text.
    #[test]
    fn fuzz_config_parser(
        text in "\\PC{0,200}",
        ms in prop::collection::vec(musicfs_fuzz::mutation(), 0..6),
    ) {
        if let Ok(c) = Config::parse(&text) {
            let _ = c.validate();
        }
        let mut bytes = CONFIG_SEED.as_bytes().to_vec();
        for m in &ms {
            musicfs_fuzz::apply(&mut bytes, m);
        }
        if let Ok(c) = Config::parse(&String::from_utf8_lossy(&bytes)) {
            let _ = c.validate();
        }
    }

    /// Path templates.
    #[test]
    fn fuzz_template_parser(text in "[$a-z_{}/ ().\\[\\]%:|-]{0,80}|\\PC{0,80}") {
        if let Ok(t) = Template::parse(&text) {
            let _ = t.component_count();
        }
    }

    /// The example format plugin's APEv2 and WavPack block reader, through the C ABI.
    #[test]
    fn fuzz_wavpack_plugin((_name, input) in mutated(&[".wv"])) {
        let _ = read_with_plugin(input);
    }
}

/// Found by `fuzz_snapshot_loader` at a million cases in a debug build: a damaged name
/// offset near `usize::MAX` overflowed where the name's end was added up (release builds
/// wrapped it into an empty name). The snapshot must open or be refused, and walk, without
/// a panic.
#[test]
fn a_snapshot_whose_name_offset_overflows_walks_without_a_panic() {
    use musicfs_fuzz::Mutation::{Remove, Repeat};
    let mut bytes = snapshot_seed();
    for m in [
        Remove(4_493_475_094_239_301_841, 59),
        Repeat(1_929_840_590_887_493_613, 59, 1),
    ] {
        musicfs_fuzz::apply(&mut bytes, &m);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tree.snap");
    std::fs::write(&path, &bytes).unwrap();
    if let Ok(s) = musicfs_core::snapshot::Snapshot::open(&path) {
        let _ = s.walk();
    }
}

const CONFIG_SEED: &str = r#"
template = "$albumartist/$album ($year) [$format]/$track - $title"
cache_budget = "2G"
mass_removal_threshold = 0.5
[[origin]]
path = "/srv/music"
priority = 1
[collections.jazz60s]
query = "genre:jazz year:[1960 TO 1969]"
limit = 50
[plugin_grants.mb]
hosts = ["musicbrainz.org"]
[[webhook]]
url = "http://127.0.0.1:9/x"
events = ["file."]
"#;

/// A snapshot of a small tree, written once per process.
fn snapshot_seed() -> Vec<u8> {
    use musicfs_core::meta::{OriginId, ScanState, TrackId, TrackMeta, TrackRecord};
    static SEED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SEED.get_or_init(|| {
        let records: Vec<TrackRecord> = (1..6u64)
            .map(|i| TrackRecord {
                id: TrackId(i),
                origin: OriginId(0),
                rel_path: format!("a/{i}.flac").into_bytes(),
                format: Format::Flac,
                scan: ScanState::default(),
                meta: TrackMeta {
                    title: Some(format!("T{i}")),
                    artist: vec![format!("A{}", i % 2)],
                    album: Some("Al".into()),
                    ..TrackMeta::default()
                },
            })
            .collect();
        let template = musicfs_core::template::DEFAULT_TEMPLATE;
        let t = Template::parse(template).unwrap();
        let mut b = musicfs_core::tree::TreeBuilder::new(template, vec!["/music".into()]);
        for r in &records {
            b.add(r, &t.render(r));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tree.snap");
        musicfs_core::snapshot::Snapshot::write(&path, &b.build(), 1).unwrap();
        std::fs::read(&path).unwrap()
    })
    .clone()
}

fn read_with_plugin(input: Vec<u8>) -> i32 {
    musicfs_plugin_api::read_format_bytes::<musicfs_plugin_wavpack::WavPack>(&input).0
}
