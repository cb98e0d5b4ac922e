//! The shared chunk tier (FR-20): a bucket of an S3-compatible store (the Garage, MinIO or
//! Ceph a site already runs) that several daemons use as a second cache tier.
//!
//! Layout under the tier's prefix:
//! - `c/<hash>`: a chunk's bytes, named by its xxh3-128 (32 hex digits).
//! - `w/<version>/<start>`: the chunks of one window of a file version (`<version>`: the
//!   xxh3-128 of the read path's version key, which names origin, path, length, mtime and
//!   ETag; `<start>`: the window's first byte), as a signed record: `MFSW1`, the window
//!   start, the chunk count, each chunk's (offset, length, hash), then an HMAC-SHA256 over
//!   the version key and all of that with the site's tier key.
//! - `v/<recorded>`: the whole version key (`MFSV1`, the key, an HMAC as above) of the
//!   file a tree records with this path, length and mtime (`<recorded>`: their xxh3-128),
//!   written with the file's first window: another daemon opens the file from the tier
//!   without asking the origin for its ETag.
//! - `s/<name>`: a shared library (catalog and tree, see `musicfs share push`), with an
//!   HMAC over its name and bytes.
//!
//! A reader trusts a window record only when its signature checks out (so a tier anyone
//! can write cannot make a daemon serve bytes no daemon fetched from the origin), and each
//! chunk only when its hash matches ([`super::super::cached`] checks). Chunks are written
//! before the record that names them. Writes go out on a thread of their own from a small
//! queue (full: dropped and counted); a failed write costs another daemon a miss.
//!
//! This is the only code that writes to an S3 bucket, and it writes only to the tier's.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use hmac::{Hmac, Mac};
use object_store::aws::AmazonS3;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::Sha256;

use super::super::cached::{ChunkRef, ChunkTier};
use super::super::remote::Remote;
use super::super::{OriginError, OriginSettings, OriginSpec};
use super::{classify, object_key, Connected};

/// Windows waiting to be written at most (each up to a chunk window, 4 MiB).
const QUEUE: usize = 16;

const MAGIC: &[u8; 5] = b"MFSW1";
const VERSION_MAGIC: &[u8; 5] = b"MFSV1";

/// Bytes of one chunk in a window record.
const CHUNK_RECORD: usize = 8 + 4 + 16;

/// Keys shorter than this are refused (they could be guessed).
pub const MIN_KEY: usize = 16;

/// What a tier did, for `musicfs cache stats` and metrics.
#[derive(Debug, Default)]
pub struct TierCounters {
    /// Windows written.
    pub windows_put: AtomicU64,
    /// Windows not written: the queue was full, or the write failed.
    pub dropped: AtomicU64,
    /// Window records refused: bad signature or malformed.
    pub forged: AtomicU64,
}

/// See the module documentation.
pub struct S3Tier {
    store: AmazonS3,
    remote: Arc<Remote>,
    /// The key prefix, with its trailing `/` (empty for the whole bucket).
    prefix: String,
    shown: String,
    key: Vec<u8>,
    counters: Arc<TierCounters>,
    writes: Sender<Write>,
}

impl fmt::Debug for S3Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The store holds credentials and `key` is secret: both left out.
        f.debug_struct("S3Tier")
            .field("tier", &self.shown)
            .finish_non_exhaustive()
    }
}

/// What one window writes: its chunks first, then the records naming them.
struct Write {
    chunks: Vec<(String, Vec<u8>)>,
    records: Vec<(String, Vec<u8>)>,
}

impl S3Tier {
    /// The tier at `spec` (an `s3://` spec, as for origins), signing its window records
    /// with `key`. Does not contact the server.
    pub fn open(
        spec: &OriginSpec,
        settings: &OriginSettings,
        key: Vec<u8>,
    ) -> Result<Arc<S3Tier>, OriginError> {
        if key.len() < MIN_KEY {
            return Err(OriginError::BadSpec {
                spec: spec.to_string(),
                reason: format!(
                    "the shared tier's key is {} bytes; at least {MIN_KEY} are needed",
                    key.len()
                ),
            });
        }
        let Connected {
            store,
            remote,
            prefix,
            shown,
            ..
        } = super::connect(spec, settings)?;
        let (tx, rx) = crossbeam_channel::bounded::<Write>(QUEUE);
        let tier = Arc::new(S3Tier {
            store,
            remote,
            prefix,
            shown,
            key,
            counters: Arc::default(),
            writes: tx,
        });
        let weak = Arc::downgrade(&tier);
        std::thread::Builder::new()
            .name("tier-put".into())
            .spawn(move || {
                for w in rx {
                    let Some(tier) = weak.upgrade() else { return };
                    match tier.write(&w) {
                        Ok(()) => tier.counters.windows_put.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            tracing::debug!(tier = %tier.shown, error = %e,
                                "a window was not written to the shared tier");
                            tier.counters.dropped.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
            .map_err(|e| OriginError::Io {
                origin: spec.to_string(),
                op: "start the writer of",
                rel: Default::default(),
                source: e,
            })?;
        Ok(tier)
    }

    /// What it did so far.
    pub fn counters(&self) -> Arc<TierCounters> {
        Arc::clone(&self.counters)
    }

    /// The tier's display form (no credentials).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Stores `bytes` as the blob `name` (a shared library's catalog and tree), signed.
    pub fn put_blob(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut body = Vec::with_capacity(bytes.len() + 32);
        body.extend_from_slice(bytes);
        let mac = self.mac(name.as_bytes(), bytes);
        body.extend_from_slice(&mac);
        self.put(&self.blob_key(name), &body)
    }

    /// The blob `name` when the tier holds it signed with this site's key (`Ok(None)`:
    /// not there; an error when it is there but not genuine, or the tier failed).
    pub fn get_blob(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(mut rec) = self.get(&self.blob_key(name))? else {
            return Ok(None);
        };
        let Some(len) = self.verified(name.as_bytes(), &rec).map(<[u8]>::len) else {
            self.counters.forged.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{name} in the shared tier {} is not signed with this site's key",
                    self.shown
                ),
            ));
        };
        rec.truncate(len);
        Ok(Some(rec))
    }

    fn blob_key(&self, name: &str) -> String {
        format!("{}s/{name}", self.prefix)
    }

    fn chunk_key(&self, hash: u128) -> String {
        format!("{}c/{hash:032x}", self.prefix)
    }

    fn window_key(&self, version: &[u8], start: u64) -> String {
        format!(
            "{}w/{:032x}/{start}",
            self.prefix,
            xxhash_rust::xxh3::xxh3_128(version)
        )
    }

    fn version_key(&self, recorded: &[u8]) -> String {
        format!(
            "{}v/{:032x}",
            self.prefix,
            xxhash_rust::xxh3::xxh3_128(recorded)
        )
    }

    /// The signed record of the version a tree's record names.
    fn version_record(&self, recorded: &[u8], version: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(5 + version.len() + 32);
        body.extend_from_slice(VERSION_MAGIC);
        body.extend_from_slice(version);
        let mac = self.mac(recorded, &body);
        body.extend_from_slice(&mac);
        body
    }

    fn parse_version(&self, recorded: &[u8], rec: &[u8]) -> Option<Vec<u8>> {
        let body = self.verified(recorded, rec)?;
        body.strip_prefix(VERSION_MAGIC.as_slice())
            .map(<[u8]>::to_vec)
    }

    /// `rec`'s body when its signature (over `about` and the body) checks out.
    fn verified<'r>(&self, about: &[u8], rec: &'r [u8]) -> Option<&'r [u8]> {
        let body = rec.get(..rec.len().checked_sub(32)?)?;
        self.hmac(about, body)
            .verify_slice(&rec[body.len()..])
            .ok()?;
        Some(body)
    }

    /// The signature of `body` about `about` (a version key, a recorded key, a name).
    fn mac(&self, about: &[u8], body: &[u8]) -> [u8; 32] {
        self.hmac(about, body).finalize().into_bytes().into()
    }

    /// The site key's HMAC over `about` (length first) and `body`.
    fn hmac(&self, about: &[u8], body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&(about.len() as u64).to_be_bytes());
        mac.update(about);
        mac.update(body);
        mac
    }

    /// The signed record of a window.
    fn record(&self, version: &[u8], start: u64, chunks: &[ChunkRef]) -> Vec<u8> {
        let mut body = Vec::with_capacity(5 + 12 + chunks.len() * CHUNK_RECORD + 32);
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&start.to_be_bytes());
        body.extend_from_slice(&(chunks.len() as u32).to_be_bytes());
        for c in chunks {
            body.extend_from_slice(&c.offset.to_be_bytes());
            body.extend_from_slice(&c.len.to_be_bytes());
            body.extend_from_slice(&c.hash.to_be_bytes());
        }
        let mac = self.mac(version, &body);
        body.extend_from_slice(&mac);
        body
    }

    /// The chunks a window record lists, when it is well formed, for this version and
    /// window, and signed with this tier's key.
    fn parse(&self, version: &[u8], start: u64, rec: &[u8]) -> Option<Vec<ChunkRef>> {
        let body = self.verified(version, rec)?;
        let rest = body.strip_prefix(MAGIC.as_slice())?;
        let (at, rest) = rest.split_first_chunk::<8>()?;
        let (count, rest) = rest.split_first_chunk::<4>()?;
        let count = u32::from_be_bytes(*count) as usize;
        if u64::from_be_bytes(*at) != start || rest.len() != count.checked_mul(CHUNK_RECORD)? {
            return None;
        }
        rest.chunks_exact(CHUNK_RECORD)
            .map(|c| {
                let (offset, c) = c.split_first_chunk::<8>()?;
                let (len, c) = c.split_first_chunk::<4>()?;
                let hash = <[u8; 16]>::try_from(c).ok()?;
                Some(ChunkRef {
                    offset: u64::from_be_bytes(*offset),
                    len: u32::from_be_bytes(*len),
                    hash: u128::from_be_bytes(hash),
                })
            })
            .collect()
    }

    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = object_key(key)?;
        let got = self.remote.call(&format!("GET tier {key}"), || async {
            let got = self.store.get(&path).await.map_err(classify)?;
            got.bytes().await.map_err(classify)
        });
        match got {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = object_key(key)?;
        let payload = PutPayload::from(bytes.to_vec());
        self.remote.call(&format!("PUT tier {key}"), || {
            let payload = payload.clone();
            let path = path.clone();
            async move {
                self.store
                    .put(&path, payload)
                    .await
                    .map(|_| ())
                    // Retried like a GET: writing the same bytes again is harmless.
                    .map_err(classify)
            }
        })
    }

    fn write(&self, w: &Write) -> io::Result<()> {
        for (key, bytes) in w.chunks.iter().chain(&w.records) {
            self.put(key, bytes)?;
        }
        Ok(())
    }
}

impl ChunkTier for S3Tier {
    fn window(&self, version: &[u8], start: u64) -> Option<Vec<ChunkRef>> {
        let key = self.window_key(version, start);
        let rec = match self.get(&key) {
            Ok(Some(rec)) => rec,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(tier = %self.shown, error = %e, "the shared tier did not answer");
                return None;
            }
        };
        let chunks = self.parse(version, start, &rec);
        if chunks.is_none() {
            self.counters.forged.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tier = %self.shown, key,
                "a window record in the shared tier is not signed with this site's key: ignored");
        }
        chunks
    }

    fn chunk(&self, c: &ChunkRef) -> Option<Vec<u8>> {
        self.get(&self.chunk_key(c.hash)).ok().flatten()
    }

    fn version(&self, recorded: &[u8]) -> Option<Vec<u8>> {
        let key = self.version_key(recorded);
        let rec = self.get(&key).ok().flatten()?;
        let version = self.parse_version(recorded, &rec);
        if version.is_none() {
            self.counters.forged.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tier = %self.shown, key,
                "a version record in the shared tier is not signed with this site's key: ignored");
        }
        version
    }

    fn offer(&self, version: &[u8], recorded: usize, start: u64, chunks: &[ChunkRef], data: &[u8]) {
        let mut parts = Vec::with_capacity(chunks.len());
        let mut at = 0usize;
        for c in chunks {
            let Some(bytes) = data.get(at..at + c.len as usize) else {
                return;
            };
            parts.push((self.chunk_key(c.hash), bytes.to_vec()));
            at += c.len as usize;
        }
        let mut records = vec![(
            self.window_key(version, start),
            self.record(version, start, chunks),
        )];
        if start == 0 {
            if let Some(recorded) = version.get(..recorded) {
                records.push((
                    self.version_key(recorded),
                    self.version_record(recorded, version),
                ));
            }
        }
        let w = Write {
            chunks: parts,
            records,
        };
        match self.writes.try_send(w) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier() -> Arc<S3Tier> {
        let spec = OriginSpec::parse("s3://bucket/site?endpoint=http://127.0.0.1:9").unwrap();
        let settings = OriginSettings::default();
        // SAFETY (edition 2024 wording aside): tests of this module set the same values.
        std::env::set_var("AWS_ACCESS_KEY_ID", "k");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "s");
        S3Tier::open(&spec, &settings, b"0123456789abcdef0123".to_vec()).unwrap()
    }

    #[test]
    fn window_records_round_trip_and_refuse_tampering() {
        let t = tier();
        let chunks = [
            ChunkRef {
                offset: 100,
                len: 10,
                hash: 7,
            },
            ChunkRef {
                offset: 110,
                len: 5,
                hash: u128::MAX,
            },
        ];
        let rec = t.record(b"v1", 100, &chunks);
        assert_eq!(t.parse(b"v1", 100, &rec).unwrap(), chunks);
        // Another version, another window, a flipped byte, a cut record: refused.
        assert!(t.parse(b"v2", 100, &rec).is_none());
        assert!(t.parse(b"v1", 0, &rec).is_none());
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 1;
            assert!(t.parse(b"v1", 100, &bad).is_none(), "byte {i}");
        }
        assert!(t.parse(b"v1", 100, &rec[..rec.len() - 1]).is_none());
        assert!(t.parse(b"v1", 100, &[]).is_none());
        // Signed with another key: refused.
        let other = S3Tier::open(
            &OriginSpec::parse("s3://bucket/site?endpoint=http://127.0.0.1:9").unwrap(),
            &OriginSettings::default(),
            b"another key of 16+ bytes".to_vec(),
        )
        .unwrap();
        assert!(other.parse(b"v1", 100, &rec).is_none());
        // Version records: the same rules.
        let v = t.version_record(b"path\0len+mtime", b"path\0len+mtime+etag");
        assert_eq!(
            t.parse_version(b"path\0len+mtime", &v).unwrap(),
            b"path\0len+mtime+etag"
        );
        assert!(t.parse_version(b"path\0other", &v).is_none());
        assert!(other.parse_version(b"path\0len+mtime", &v).is_none());
        assert!(t.parse_version(b"path\0len+mtime", &rec).is_none());
    }

    #[test]
    fn short_keys_are_refused() {
        let spec = OriginSpec::parse("s3://bucket?endpoint=http://127.0.0.1:9").unwrap();
        let err = S3Tier::open(&spec, &OriginSettings::default(), b"short".to_vec()).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
    }
}
