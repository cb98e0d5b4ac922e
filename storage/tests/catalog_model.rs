//! The catalog against a `HashMap` reference model over random upsert/remove sequences:
//! the path index, lookups and ids must always agree with the model, also after reopening.

use std::collections::HashMap;
use std::path::Path;

use musicfs_core::meta::{Format, OriginId, ScanState, TrackId, TrackMeta};
use musicfs_storage::{Catalog, Upsert};
use proptest::prelude::*;

const ORIGINS: usize = 2;

fn path_pool() -> Vec<Vec<u8>> {
    let long = b"very/".repeat(110);
    let mut pool = vec![
        b"a.flac".to_vec(),
        b"dir/b.mp3".to_vec(),
        b"dir/sub/c.ogg".to_vec(),
        b"\xff\xfe/not utf8.opus".to_vec(),
        "Sigur Rós/Ágætis byrjun/01.flac".as_bytes().to_vec(),
        b"dir".to_vec(),
    ];
    for tail in [&b"x.flac"[..], b"y.flac"] {
        let mut p = long.clone();
        p.extend_from_slice(tail);
        pool.push(p);
    }
    pool
}

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        origin: usize,
        path: usize,
        size: u64,
        title: u8,
    },
    /// Removes the `pick`-th live track (by id), if any.
    Remove { pick: usize },
    /// Removes an id that was never issued.
    RemoveUnknown,
}

fn op() -> impl Strategy<Value = Op> {
    let pool = path_pool().len();
    prop_oneof![
        4 => (0..ORIGINS, 0..pool, 0..3u64, 0..3u8)
            .prop_map(|(origin, path, size, title)| Op::Upsert { origin, path, size, title }),
        2 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        1 => Just(Op::RemoveUnknown),
    ]
}

/// What the catalog must contain: (origin, path) -> (id, scan, title).
#[derive(Default)]
struct Model {
    live: HashMap<(OriginId, Vec<u8>), (TrackId, ScanState, String)>,
    max_issued: Option<TrackId>,
}

impl Model {
    fn live_ids(&self) -> Vec<TrackId> {
        let mut ids: Vec<TrackId> = self.live.values().map(|v| v.0).collect();
        ids.sort();
        ids
    }

    /// Applies a batch, checking the ids the catalog returned for its upserts.
    fn apply(&mut self, upserts: &[Upsert], removals: &[TrackId], returned: &[TrackId]) {
        self.live.retain(|_, (id, _, _)| !removals.contains(id));
        assert_eq!(upserts.len(), returned.len());
        for (up, &id) in upserts.iter().zip(returned) {
            let key = (up.origin, up.rel_path.clone());
            let title = up.meta.title.clone().unwrap_or_default();
            match self.live.get_mut(&key) {
                Some(entry) => {
                    assert_eq!(entry.0, id, "an existing path keeps its id");
                    *entry = (id, up.scan, title);
                }
                None => {
                    assert!(
                        self.max_issued.is_none_or(|max| id > max),
                        "id {id:?} reused"
                    );
                    self.max_issued = Some(id);
                    self.live.insert(key, (id, up.scan, title));
                }
            }
        }
    }

    fn check(&self, catalog: &Catalog, origins: &[OriginId], removed: &[TrackId]) {
        assert_eq!(catalog.len().unwrap(), self.live.len() as u64);
        for &origin in origins {
            let expected: HashMap<Vec<u8>, (TrackId, ScanState)> = self
                .live
                .iter()
                .filter(|((o, _), _)| *o == origin)
                .map(|((_, path), (id, scan, _))| (path.clone(), (*id, *scan)))
                .collect();
            assert_eq!(catalog.scan_states(origin).unwrap(), expected);
        }
        for ((origin, path), (id, scan, title)) in &self.live {
            let record = catalog
                .find(*origin, path)
                .unwrap()
                .expect("live path is found");
            assert_eq!((record.id, record.scan), (*id, *scan));
            assert_eq!(record.meta.title.as_deref(), Some(title.as_str()));
            assert_eq!(catalog.get(*id).unwrap(), Some(record));
        }
        for id in removed {
            if !self.live.values().any(|v| v.0 == *id) {
                assert_eq!(catalog.get(*id).unwrap(), None);
            }
        }
        let mut listed = Vec::new();
        catalog.for_each(|r| listed.push(r.id)).unwrap();
        assert_eq!(
            listed,
            self.live_ids(),
            "for_each walks live tracks in id order"
        );
    }
}

fn build_batch(
    ops: &[Op],
    model: &Model,
    origins: &[OriginId],
    pool: &[Vec<u8>],
) -> (Vec<Upsert>, Vec<TrackId>) {
    let live = model.live_ids();
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    for op in ops {
        match *op {
            Op::Upsert {
                origin,
                path,
                size,
                title,
            } => upserts.push(Upsert {
                origin: origins[origin],
                rel_path: pool[path].clone(),
                format: Format::Opus,
                scan: ScanState {
                    size,
                    ..ScanState::default()
                },
                meta: TrackMeta {
                    title: Some(format!("title {title}")),
                    ..TrackMeta::default()
                },
            }),
            Op::Remove { pick } if !live.is_empty() => removals.push(live[pick % live.len()]),
            Op::Remove { .. } => {}
            Op::RemoveUnknown => removals.push(TrackId(u64::MAX - 1)),
        }
    }
    (upserts, removals)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_path_index_matches_a_reference_model_over_random_operations(
        batches in prop::collection::vec(prop::collection::vec(op(), 0..6), 1..12)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let pool = path_pool();
        let mut model = Model::default();
        let mut removed = Vec::new();
        let origins = {
            let catalog = Catalog::open_with_map_size(dir.path(), 256 * 1024).unwrap();
            let origins: Vec<OriginId> = (0..ORIGINS)
                .map(|i| catalog.origin_id(Path::new(&format!("/origin/{i}"))).unwrap())
                .collect();
            for ops in &batches {
                let (upserts, removals) = build_batch(ops, &model, &origins, &pool);
                let returned = catalog.apply(&upserts, &removals).unwrap();
                model.apply(&upserts, &removals, &returned);
                removed.extend(removals);
                model.check(&catalog, &origins, &removed);
            }
            origins
        };

        let catalog = Catalog::open_with_map_size(dir.path(), 256 * 1024).unwrap();
        model.check(&catalog, &origins, &removed);
    }
}
