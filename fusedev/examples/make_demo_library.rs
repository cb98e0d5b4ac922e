//! Writes a small fake library (origin files) and its snapshot under DIR, for trying
//! `serve_snapshot` by hand: `make_demo_library DIR [TRACKS [BIG_MIB]]` → DIR/origin, DIR/snapshot; with BIG_MIB, track 1
//! is that many MiB (for throughput runs).

use std::path::PathBuf;

use anyhow::Context;
use musicfs_core::meta::{Format, OriginId, ScanState, TrackId, TrackMeta, TrackRecord};
use musicfs_core::snapshot::Snapshot;
use musicfs_core::tree::TreeBuilder;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: make_demo_library DIR [TRACKS]")?,
    );
    let tracks: u64 = match args.next() {
        Some(n) => n.to_string_lossy().parse()?,
        None => 30,
    };
    let big_mib: Option<usize> = match args.next() {
        Some(n) => Some(n.to_string_lossy().parse()?),
        None => None,
    };
    let origin = dir.join("origin");
    std::fs::create_dir_all(&origin)?;
    let origin = origin.canonicalize()?;
    let mut builder = TreeBuilder::new("$artist/$album/$track - $title", vec![origin.clone()]);
    for id in 1..=tracks {
        let rel = format!("raw/{id:05}.flac");
        let path = origin.join(&rel);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        let len = match big_mib {
            Some(mib) if id == 1 => mib << 20,
            _ => 1000 + (id as usize * 7919) % 300_000,
        };
        let bytes: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + id) as u8).collect();
        std::fs::write(&path, &bytes)?;
        let artist = format!("Artist {}", id % 3);
        let album = format!("Album {}", id % 5);
        let title = format!("Song {id}");
        let rec = TrackRecord {
            id: TrackId(id),
            origin: OriginId(0),
            rel_path: rel.into_bytes(),
            format: Format::Flac,
            scan: ScanState {
                size: len as u64,
                mtime_ns: 1_700_000_000_000_000_000 + id as i64,
                ino: 0,
                ctime_ns: 0,
                perm: None,
            },
            meta: TrackMeta {
                title: Some(title.clone()),
                artist: vec![artist.clone()],
                album: Some(album.clone()),
                ..TrackMeta::default()
            },
        };
        let name = format!("{:02} - {title}.flac", id % 100);
        builder.add(&rec, &[artist, album, name]);
    }
    let snap = dir.join("snapshot");
    Snapshot::write(&snap, &builder.build(), 1)?;
    println!("{}", snap.display());
    Ok(())
}
