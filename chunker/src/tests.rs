use proptest::prelude::*;

use super::*;

/// A FLAC file: STREAMINFO, a VORBIS_COMMENT holding `comment`, a PICTURE, then audio.
fn flac(comment: &[u8], picture: &[u8], audio: &[u8]) -> Vec<u8> {
    let mut f = b"fLaC".to_vec();
    for (i, (kind, body)) in [(0u8, &[7u8; 34][..]), (4, comment), (6, picture)]
        .into_iter()
        .enumerate()
    {
        let last = if i == 2 { 0x80 } else { 0 };
        let len = (body.len() as u32).to_be_bytes();
        f.extend_from_slice(&[kind | last, len[1], len[2], len[3]]);
        f.extend_from_slice(body);
    }
    f.extend_from_slice(audio);
    f
}

fn id3(body_len: u32, footer: bool) -> Vec<u8> {
    let s = [
        (body_len >> 21) as u8 & 0x7F,
        (body_len >> 14) as u8 & 0x7F,
        (body_len >> 7) as u8 & 0x7F,
        body_len as u8 & 0x7F,
    ];
    let flags = if footer { 0x10 } else { 0 };
    let mut t = vec![b'I', b'D', b'3', 4, 0, flags, s[0], s[1], s[2], s[3]];
    t.extend(std::iter::repeat_n(b'x', body_len as usize));
    if footer {
        t.extend_from_slice(b"3DI\x04\x00\x10");
        t.extend_from_slice(&s);
    }
    t
}

fn mp4_box(kind: &[u8; 4], body_len: usize) -> Vec<u8> {
    let mut b = ((body_len + 8) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(kind);
    b.extend(std::iter::repeat_n(0u8, body_len));
    b
}

fn ogg_page(serial: u32, packets: &[usize]) -> Vec<u8> {
    let mut table = Vec::new();
    for &p in packets {
        table.extend(std::iter::repeat_n(255u8, p / 255));
        table.push((p % 255) as u8);
    }
    let mut page = b"OggS\0\0".to_vec();
    page.extend_from_slice(&[0; 8]);
    page.extend_from_slice(&serial.to_le_bytes());
    page.extend_from_slice(&[0; 8]);
    page.push(table.len() as u8);
    page.extend_from_slice(&table);
    page
}

fn ogg_file(first_packet: &[u8], header_pages: &[&[usize]], audio: usize) -> (Vec<u8>, u64) {
    let mut f = ogg_page(9, &[first_packet.len()]);
    f.extend_from_slice(first_packet);
    for sizes in header_pages {
        f.extend(ogg_page(9, sizes));
        f.extend(std::iter::repeat_n(1u8, sizes.iter().sum()));
    }
    let end = f.len() as u64;
    f.extend(ogg_page(9, &[audio]));
    f.extend(noise(audio, 3));
    (f, end)
}

#[test]
fn flac_tag_region_ends_after_the_last_metadata_block() {
    let f = flac(b"TITLE=a", &[1; 300], &noise(1000, 1));
    assert_eq!(tag_region(&f, f.len() as u64), Some(4 + 38 + 11 + 304));
}

#[test]
fn flac_with_a_short_head_asks_for_the_next_block_header() {
    let f = flac(b"TITLE=a", &[1; 300], &noise(1000, 1));
    assert_eq!(
        scan_tag_region(&f[..50], f.len() as u64),
        TagScan::NeedMore(57)
    );
    let got = locate_tag_region(f.len() as u64, |n| {
        Ok::<_, ()>(f[..n.min(f.len())].to_vec())
    });
    assert_eq!(got, Ok(Some(357)));
}

#[test]
fn mp3_tag_region_is_the_id3v2_tag_with_its_footer() {
    let mut f = id3(1000, true);
    f.extend(noise(5000, 2));
    assert_eq!(tag_region(&f, f.len() as u64), Some(1020));
    let mut g = id3(1000, false);
    g.extend(noise(5000, 2));
    assert_eq!(tag_region(&g, g.len() as u64), Some(1010));
}

#[test]
fn flac_behind_an_id3_tag_keeps_its_metadata_in_the_tag_region() {
    let mut f = id3(100, false);
    f.extend(flac(b"T=1", &[2; 10], &noise(500, 4)));
    assert_eq!(tag_region(&f, f.len() as u64), Some(110 + 4 + 38 + 7 + 14));
}

#[test]
fn mp4_with_moov_first_cuts_at_the_mdat_payload() {
    let mut f = mp4_box(b"ftyp", 16);
    f.extend(mp4_box(b"moov", 500));
    f.extend(mp4_box(b"free", 40));
    f.extend(mp4_box(b"mdat", 4000));
    assert_eq!(tag_region(&f, f.len() as u64), Some(24 + 508 + 48 + 8));
}

#[test]
fn mp4_with_mdat_first_has_no_tag_region() {
    let mut f = mp4_box(b"ftyp", 16);
    f.extend(mp4_box(b"mdat", 4000));
    f.extend(mp4_box(b"moov", 500));
    assert_eq!(tag_region(&f, f.len() as u64), None);
}

#[test]
fn mp4_largesize_mdat_is_understood() {
    let mut f = mp4_box(b"ftyp", 8);
    f.extend(mp4_box(b"moov", 20));
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(b"mdat");
    f.extend_from_slice(&(16u64 + 100).to_be_bytes());
    f.extend(noise(100, 5));
    assert_eq!(tag_region(&f, f.len() as u64), Some(16 + 28 + 16));
}

#[test]
fn ogg_vorbis_tag_region_ends_after_the_three_header_packets() {
    let mut ident = b"\x01vorbis".to_vec();
    ident.extend_from_slice(&[0; 23]);
    let (f, end) = ogg_file(&ident, &[&[600, 300]], 3000);
    assert_eq!(tag_region(&f, f.len() as u64), Some(end));
    let (g, end) = ogg_file(&ident, &[&[600], &[300, 4000]], 3000);
    assert_eq!(tag_region(&g, g.len() as u64), Some(end));
}

#[test]
fn ogg_opus_tag_region_ends_after_opustags() {
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1; 11]);
    let (f, end) = ogg_file(&head, &[&[700]], 3000);
    assert_eq!(tag_region(&f, f.len() as u64), Some(end));
}

#[test]
fn hostile_headers_give_unknown_not_a_panic() {
    // A FLAC block length past the file.
    let mut f = b"fLaC\x84\xff\xff\xff".to_vec();
    f.extend_from_slice(&[0; 100]);
    assert_eq!(scan_tag_region(&f, f.len() as u64), TagScan::Unknown);
    // An ID3 size past the file.
    assert_eq!(tag_region(&id3(1000, false)[..20], 20), None);
    // An MP4 box of size 3 (smaller than its header) and of size u64::MAX.
    let mut m = mp4_box(b"ftyp", 8);
    m.extend_from_slice(&3u32.to_be_bytes());
    m.extend_from_slice(b"moov");
    assert_eq!(scan_tag_region(&m, 1 << 40), TagScan::Unknown);
    let mut m = mp4_box(b"ftyp", 8);
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(b"moov");
    m.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(scan_tag_region(&m, u64::MAX), TagScan::Unknown);
    // Truncated heads of files claiming to be huge.
    for head in [&b"fL"[..], b"ID3\x04", b"OggS\0\0", b"\0\0\0\x20ftyp"] {
        assert!(matches!(
            scan_tag_region(head, u64::MAX),
            TagScan::NeedMore(_) | TagScan::Unknown
        ));
        assert_eq!(tag_region(head, head.len() as u64), None);
    }
}

#[test]
fn windows_count_from_the_tag_region_end() {
    let p = Params {
        window: 1000,
        ..Params::AUDIO
    };
    let l = Layout::new(3500, Some(1200), p);
    let w: Vec<_> = l.windows().collect();
    assert_eq!(
        w,
        vec![0..1000, 1000..1200, 1200..2200, 2200..3200, 3200..3500]
    );
    assert_eq!(l.align(1100..2300), 1000..3200);
    assert_eq!(l.align(3400..9999), 3200..3500);
    assert!(l.chunk_range(1100, &[0; 100]).is_err());
}

/// Chunk lists joined must cover `0..len` with nothing missing or overlapping.
fn assert_covers(chunks: &[Chunk], data: &[u8], window: u64) {
    let mut at = 0;
    for c in chunks {
        assert_eq!(c.offset, at);
        assert!(c.len > 0 && u64::from(c.len) <= window);
        assert_eq!(c.hash, hash(&data[c.offset as usize..c.end() as usize]));
        at = c.end();
    }
    assert_eq!(at, data.len() as u64);
}

fn small_params() -> Params {
    Params {
        tag: Sizes::new(64, 256, 1024).unwrap(),
        audio: Sizes::new(256, 1024, 4096).unwrap(),
        window: 16 << 10,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn chunks_cover_the_input_exactly_and_deterministically(
        len in 0usize..200_000, seed in any::<u64>(), tag in 0usize..50_000
    ) {
        let data = flac(&noise(tag, seed ^ 9), &[], &noise(len, seed));
        let p = small_params();
        let (layout, chunks) = chunk_file(&data, p);
        assert_covers(&chunks, &data, u64::from(p.window));
        prop_assert_eq!(layout.tag_end(), 4 + 38 + 4 + tag as u64 + 4);
        prop_assert!(chunks.iter().any(|c| c.offset == layout.tag_end()) || len == 0);
        let (_, again) = chunk_file(&data, p);
        prop_assert_eq!(&chunks, &again);
    }

    #[test]
    fn a_fetched_range_chunks_like_the_whole_file(
        len in 1usize..150_000, seed in any::<u64>(), a in any::<u64>(), b in any::<u64>()
    ) {
        let data = flac(b"ARTIST=x", &noise(3000, seed), &noise(len, seed));
        let p = small_params();
        let (layout, whole) = chunk_file(&data, p);
        let n = data.len() as u64;
        let range = layout.align((a % n)..(a % n + 1 + b % n).min(n));
        let part = layout
            .chunk_range(range.start, &data[range.start as usize..range.end as usize])
            .unwrap();
        let expected: Vec<_> = whole
            .iter()
            .copied()
            .filter(|c| c.offset >= range.start && c.end() <= range.end)
            .collect();
        prop_assert_eq!(part, expected);
    }

    #[test]
    fn a_tag_edit_changes_only_tag_chunks(
        len in 1usize..200_000, seed in any::<u64>(),
        before in 0usize..5000, after in 0usize..5000, pic in 0usize..20_000
    ) {
        let audio = noise(len, seed);
        let picture = noise(pic, seed ^ 7);
        let a = flac(&noise(before, 1), &picture, &audio);
        let b = flac(&noise(after, 2), &picture, &audio);
        let p = small_params();
        let (la, ca) = chunk_file(&a, p);
        let (lb, cb) = chunk_file(&b, p);
        let audio_of = |l: Layout, cs: &[Chunk]| -> Vec<(u64, u32, u128)> {
            cs.iter()
                .filter(|c| c.offset >= l.tag_end())
                .map(|c| (c.offset - l.tag_end(), c.len, c.hash))
                .collect()
        };
        prop_assert_eq!(audio_of(la, &ca), audio_of(lb, &cb));
        prop_assert!(ca.iter().all(|c| c.offset >= la.tag_end() || c.end() <= la.tag_end()));
    }

    #[test]
    fn any_head_scans_without_panicking(
        head in proptest::collection::vec(any::<u8>(), 0..400),
        prefix in 0usize..5, file_len in any::<u64>()
    ) {
        let prefixes: [&[u8]; 5] = [b"", b"fLaC", b"ID3\x03\0\0", b"OggS\0", b"\0\0\0\x10ftyp"];
        let mut h = prefixes[prefix].to_vec();
        h.extend(head);
        let end = h.len() as u64;
        for len in [file_len, end, end / 2] {
            match scan_tag_region(&h, len) {
                TagScan::End(e) => prop_assert!(e <= len),
                TagScan::NeedMore(n) => prop_assert!(n <= len),
                TagScan::Unknown => {}
            }
        }
    }
}
