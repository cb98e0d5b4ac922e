//! `Cas::verify`: every chunk's bytes against its hash, and the index's bookkeeping
//! (refcounts, LRU entries, manifests, pack accounting, stored bytes) against itself and
//! the pack files.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::schema::{self, decode_manifest, lru_key, ChunkEntry, PackEntry, KEY_STORED};
use super::{Cas, CasError};

/// One inconsistency [`Cas::verify`](super::Cas::verify) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A chunk whose bytes do not hash to its name, or cannot be read.
    BadChunk {
        /// The chunk's hash.
        hash: u128,
        /// Its pack.
        pack: u32,
        /// Its offset there.
        offset: u64,
        /// What was wrong.
        why: String,
    },
    /// A pack the index names has no file, or a shorter one than committed.
    PackTooShort {
        /// The pack id.
        pack: u32,
        /// Bytes the index committed.
        committed: u64,
        /// Bytes the file has (0 when missing).
        found: u64,
    },
    /// A pack file is longer than committed (an uncut torn append).
    PackTooLong {
        /// The pack id.
        pack: u32,
        /// Bytes the index committed.
        committed: u64,
        /// Bytes the file has.
        found: u64,
    },
    /// A pack file the index does not know.
    UnknownPack {
        /// The pack id.
        pack: u32,
    },
    /// A chunk placed outside its pack's committed length, or in a pack the index lacks.
    ChunkOutsidePack {
        /// The chunk's hash.
        hash: u128,
        /// Its pack.
        pack: u32,
    },
    /// A manifest lists a chunk that is not stored, or is unsorted or overlapping.
    BadManifest {
        /// The version key.
        key: Vec<u8>,
        /// What is wrong.
        why: String,
    },
    /// A bookkeeping value disagrees with what it counts.
    Accounting {
        /// Which value.
        what: String,
        /// Recorded value.
        recorded: u64,
        /// Value counted.
        counted: u64,
    },
    /// A record that does not decode.
    Undecodable {
        /// Which database.
        what: &'static str,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::BadChunk {
                hash,
                pack,
                offset,
                why,
            } => {
                write!(f, "chunk {hash:032x} (pack {pack}, offset {offset}): {why}")
            }
            Problem::PackTooShort {
                pack,
                committed,
                found,
            } => write!(
                f,
                "pack {pack}: {found} bytes on disk, the index committed {committed}"
            ),
            Problem::PackTooLong {
                pack,
                committed,
                found,
            } => write!(
                f,
                "pack {pack}: {found} bytes on disk, more than the {committed} committed"
            ),
            Problem::UnknownPack { pack } => write!(f, "pack {pack}: not in the index"),
            Problem::ChunkOutsidePack { hash, pack } => {
                write!(
                    f,
                    "chunk {hash:032x}: outside pack {pack}'s committed bytes"
                )
            }
            Problem::BadManifest { key, why } => {
                write!(f, "manifest {}: {why}", String::from_utf8_lossy(key))
            }
            Problem::Accounting {
                what,
                recorded,
                counted,
            } => {
                write!(f, "{what}: recorded {recorded}, counted {counted}")
            }
            Problem::Undecodable { what } => write!(f, "an undecodable record in {what}"),
        }
    }
}

/// What [`Cas::verify`](super::Cas::verify) checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chunks whose bytes were read and hashed.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Manifests checked.
    pub manifests: u64,
    /// Packs checked.
    pub packs: u64,
    /// Everything wrong, in the order found.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing was wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(super) fn run(cas: &Cas) -> Result<VerifyReport, CasError> {
    let mut r = VerifyReport::default();
    let rtxn = cas.env.read_txn().map_err(cas.lmdb("verify"))?;
    let dbs = cas.dbs;
    let lm = || cas.lmdb("verify");

    let mut packs: BTreeMap<u32, PackEntry> = BTreeMap::new();
    for item in dbs.packs.iter(&rtxn).map_err(lm())? {
        let (k, v) = item.map_err(lm())?;
        match (schema::pack_of_key(k), PackEntry::decode(v)) {
            (Some(id), Some(e)) => {
                packs.insert(id, e);
            }
            _ => r.problems.push(Problem::Undecodable { what: "packs" }),
        }
    }
    let files: HashMap<u32, u64> = cas.packs.list()?.into_iter().collect();
    for (&id, e) in &packs {
        r.packs += 1;
        let found = files.get(&id).copied().unwrap_or(0);
        if found < e.len || !files.contains_key(&id) {
            r.problems.push(Problem::PackTooShort {
                pack: id,
                committed: e.len,
                found,
            });
        } else if found > e.len {
            r.problems.push(Problem::PackTooLong {
                pack: id,
                committed: e.len,
                found,
            });
        }
    }
    for &id in files.keys() {
        if !packs.contains_key(&id) {
            r.problems.push(Problem::UnknownPack { pack: id });
        }
    }

    // Users per chunk, counted from the users database.
    let mut users: HashMap<u128, u64> = HashMap::new();
    for item in dbs.users.iter(&rtxn).map_err(lm())? {
        let (k, _) = item.map_err(lm())?;
        match schema::hash_of_key(k) {
            Some(h) => *users.entry(h).or_default() += 1,
            None => r.problems.push(Problem::Undecodable { what: "users" }),
        }
    }

    let mut live: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut stored = 0u64;
    let mut chunks: HashMap<u128, ChunkEntry> = HashMap::new();
    let mut buf = Vec::new();
    for item in dbs.chunks.iter(&rtxn).map_err(lm())? {
        let (k, v) = item.map_err(lm())?;
        let (Some(hash), Some(e)) = (schema::hash_of_key(k), ChunkEntry::decode(v)) else {
            r.problems.push(Problem::Undecodable { what: "chunks" });
            continue;
        };
        chunks.insert(hash, e);
        stored += u64::from(e.len);
        let l = live.entry(e.pack).or_default();
        l.0 += u64::from(e.len);
        l.1 += 1;
        let counted = users.get(&hash).copied().unwrap_or(0);
        if u64::from(e.refs) != counted || counted == 0 {
            r.problems.push(Problem::Accounting {
                what: format!("refcount of chunk {hash:032x}"),
                recorded: u64::from(e.refs),
                counted,
            });
        }
        if dbs
            .lru
            .get(&rtxn, &lru_key(e.last_use, hash))
            .map_err(lm())?
            .is_none()
        {
            r.problems.push(Problem::Accounting {
                what: format!("LRU entry of chunk {hash:032x}"),
                recorded: 0,
                counted: 1,
            });
        }
        let inside = packs
            .get(&e.pack)
            .is_some_and(|p| e.offset + u64::from(e.len) <= p.len);
        if !inside {
            r.problems
                .push(Problem::ChunkOutsidePack { hash, pack: e.pack });
            continue;
        }
        r.chunks += 1;
        r.bytes += u64::from(e.len);
        match cas.packs.read(e.pack, e.offset, e.len as usize, &mut buf) {
            Ok(()) if musicfs_chunker::hash(&buf) == hash => {}
            Ok(()) => r.problems.push(Problem::BadChunk {
                hash,
                pack: e.pack,
                offset: e.offset,
                why: "bytes do not match the hash".into(),
            }),
            Err(err) => r.problems.push(Problem::BadChunk {
                hash,
                pack: e.pack,
                offset: e.offset,
                why: format!("unreadable: {err}"),
            }),
        }
    }
    let lru_len = dbs.lru.len(&rtxn).map_err(lm())?;
    if lru_len != chunks.len() as u64 {
        r.problems.push(Problem::Accounting {
            what: "LRU entries".into(),
            recorded: lru_len,
            counted: chunks.len() as u64,
        });
    }
    let recorded = schema::u64_value(dbs.meta.get(&rtxn, KEY_STORED).map_err(lm())?).unwrap_or(0);
    if recorded != stored {
        r.problems.push(Problem::Accounting {
            what: "stored bytes".into(),
            recorded,
            counted: stored,
        });
    }
    for (&id, e) in &packs {
        let (bytes, n) = live.get(&id).copied().unwrap_or((0, 0));
        if e.live_bytes != bytes || u64::from(e.live_chunks) != n {
            r.problems.push(Problem::Accounting {
                what: format!("live bytes/chunks of pack {id}"),
                recorded: e.live_bytes,
                counted: bytes,
            });
        }
    }

    let mut listed: HashMap<u128, u64> = HashMap::new();
    for item in dbs.manifests.iter(&rtxn).map_err(lm())? {
        let (k, v) = item.map_err(lm())?;
        r.manifests += 1;
        let Some(m) = decode_manifest(v) else {
            r.problems.push(Problem::Undecodable { what: "manifests" });
            continue;
        };
        let bad = |why: String| Problem::BadManifest {
            key: k.to_vec(),
            why,
        };
        if m.is_empty() {
            r.problems.push(bad("empty".into()));
        }
        if m.windows(2).any(|w| w[1].offset < w[0].end()) {
            r.problems
                .push(bad("entries unsorted or overlapping".into()));
        }
        let mut hashes: Vec<u128> = m.iter().map(|e| e.hash).collect();
        hashes.sort_unstable();
        hashes.dedup();
        for h in hashes {
            *listed.entry(h).or_default() += 1;
            match chunks.get(&h) {
                None => r
                    .problems
                    .push(bad(format!("lists chunk {h:032x}, which is not stored"))),
                Some(_) => {
                    let user = schema::user_key(h, k);
                    if dbs.users.get(&rtxn, &user).map_err(lm())?.is_none() {
                        r.problems
                            .push(bad(format!("no users entry for chunk {h:032x}")));
                    }
                }
            }
        }
        for e in &m {
            if chunks.get(&e.hash).is_some_and(|c| c.len != e.len) {
                r.problems
                    .push(bad(format!("length of chunk {:032x} differs", e.hash)));
            }
        }
    }
    for (h, n) in &users {
        if listed.get(h) != Some(n) {
            r.problems.push(Problem::Accounting {
                what: format!("users entries of chunk {h:032x}"),
                recorded: *n,
                counted: listed.get(h).copied().unwrap_or(0),
            });
        }
    }
    Ok(r)
}
