//! RIFF `INFO` tags of WAV files.
//!
//! symphonia 0.6.1's `WavReader` parses the `LIST/INFO` chunk and then drops it (it builds
//! its metadata log only from what the probe found before the container), so WAV titles and
//! artists never reach `FormatReader::metadata()`. Until that is fixed upstream we walk the
//! chunk headers ourselves and hand each INFO entry to symphonia's own RIFF INFO parser, so
//! the key mapping stays symphonia's.

use musicfs_storage::origin::Source;
use symphonia::core::meta::well_known::METADATA_ID_WAVE;
use symphonia::core::meta::{MetadataBuilder, MetadataInfo, MetadataRevision};
use symphonia::default::meta::embedded::riff::parse_riff_info_chunk;

/// Tag data larger than this is not a tag list we want to hold in memory.
const MAX_INFO_LEN: u32 = 1 << 20;
/// Stop after this many top-level chunks; real files have a handful.
const MAX_CHUNKS: usize = 1024;

const INFO: MetadataInfo = MetadataInfo {
    metadata: METADATA_ID_WAVE,
    short_name: "riff-info",
    long_name: "RIFF INFO",
};

fn read_exact_at(file: &dyn Source, buf: &mut [u8], pos: u64) -> Option<()> {
    // `read_at` fills the buffer unless the file ends first.
    (file.read_at(buf, pos).ok()? == buf.len()).then_some(())
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The first `LIST/INFO` chunk of a RIFF WAVE file as a metadata revision, or `None` when
/// the file has none or its chunk structure is broken. Reads chunk headers only, never
/// the audio data.
pub(crate) fn wav_info_revision(file: &dyn Source, file_len: u64) -> Option<MetadataRevision> {
    let mut head = [0u8; 12];
    read_exact_at(file, &mut head, 0)?;
    if &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12u64;
    for _ in 0..MAX_CHUNKS {
        let mut hdr = [0u8; 12];
        if pos + 8 > file_len {
            return None;
        }
        read_exact_at(file, &mut hdr[..8], pos)?;
        let size = le32(&hdr[4..8]);
        if &hdr[0..4] == b"LIST" && size >= 4 {
            read_exact_at(file, &mut hdr[8..12], pos + 8)?;
            if &hdr[8..12] == b"INFO" && size <= MAX_INFO_LEN {
                let mut body = vec![0u8; (size - 4) as usize];
                read_exact_at(file, &mut body, pos + 12)?;
                return Some(parse_info_list(&body));
            }
        }
        // Chunks are padded to an even length.
        pos = pos.checked_add(8 + u64::from(size) + u64::from(size & 1))?;
    }
    None
}

fn parse_info_list(mut body: &[u8]) -> MetadataRevision {
    let mut builder = MetadataBuilder::new(INFO);
    while body.len() >= 8 {
        let id = [body[0], body[1], body[2], body[3]];
        let size = le32(&body[4..8]) as usize;
        let Some(value) = body.get(8..8 + size) else {
            break;
        };
        let value = match value.iter().position(|b| *b == 0) {
            Some(nul) => &value[..nul],
            None => value,
        };
        // A malformed entry is skipped; the others are still worth having.
        let _ = parse_riff_info_chunk(id, value, &mut builder);
        let next = 8 + size + (size & 1);
        body = body.get(next..).unwrap_or(&[]);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use musicfs_storage::origin::{LocalOrigin, LocalSource, OriginSpec};
    use std::io::Write;
    use symphonia::core::meta::StandardTag;

    fn chunk(id: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut v = id.to_vec();
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        if data.len() % 2 == 1 {
            v.push(0);
        }
        v
    }

    /// The temp file opened as the scanner opens sources: through a local origin.
    fn source_of(f: &tempfile::NamedTempFile) -> LocalSource {
        let (dir, name) = (f.path().parent().unwrap(), f.path().file_name().unwrap());
        let origin = LocalOrigin::open(&OriginSpec::local(dir)).unwrap();
        origin.open_file(std::path::Path::new(name)).unwrap()
    }

    fn wav(chunks: &[Vec<u8>]) -> tempfile::NamedTempFile {
        let body: Vec<u8> = chunks.concat();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"RIFF").unwrap();
        f.write_all(&((body.len() + 4) as u32).to_le_bytes())
            .unwrap();
        f.write_all(b"WAVE").unwrap();
        f.write_all(&body).unwrap();
        f
    }

    #[test]
    fn info_tags_are_found_after_the_data_chunk() {
        let mut info = b"INFO".to_vec();
        info.extend(chunk(b"INAM", b"Title\0"));
        info.extend(chunk(b"IART", b"Someone\0"));
        let f = wav(&[
            chunk(b"fmt ", &[0u8; 16]),
            chunk(b"data", &[0u8; 7]),
            chunk(b"LIST", &info),
        ]);
        let file = source_of(&f);
        let rev = wav_info_revision(&file, file.len()).expect("INFO found");
        let stds: Vec<_> = rev
            .media
            .tags
            .iter()
            .filter_map(|t| t.std.clone())
            .collect();
        assert!(stds
            .iter()
            .any(|s| matches!(s, StandardTag::TrackTitle(t) if t.as_str() == "Title")));
        assert!(stds
            .iter()
            .any(|s| matches!(s, StandardTag::Artist(a) if a.as_str() == "Someone")));
    }

    #[test]
    fn broken_chunk_sizes_yield_nothing_instead_of_failing() {
        let mut bogus = b"LIST".to_vec();
        bogus.extend_from_slice(&u32::MAX.to_le_bytes());
        let f = wav(&[bogus]);
        let file = source_of(&f);
        assert!(wav_info_revision(&file, file.len()).is_none());
    }

    #[test]
    fn non_wave_files_yield_nothing() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"fLaC and some more bytes").unwrap();
        let file = source_of(&f);
        assert!(wav_info_revision(&file, 24).is_none());
    }
}
