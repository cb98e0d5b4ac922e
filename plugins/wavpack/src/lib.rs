//! An example format plugin: WavPack (`.wv`), a container the daemon's own reader does not
//! know. It reads the APEv2 tag at the end of the file (before an ID3v1 tag, if any) and
//! the stream facts from the first WavPack block headers; the daemon serves the file's
//! bytes unchanged.
//!
//! Everything read is bounded: a tag claims at most [`MAX_TAG`] bytes and [`MAX_ITEMS`]
//! items, and at most [`MAX_BLOCKS`] block headers are walked for the channel count.

use musicfs_plugin_api::{export_plugin, File, Format};

/// The largest APEv2 tag read (pictures make tags large; their items are skipped).
pub const MAX_TAG: u32 = 16 << 20;
/// The most items read from one tag.
pub const MAX_ITEMS: u32 = 1024;
/// The most block headers walked to count the channels of the first sample.
pub const MAX_BLOCKS: usize = 64;

const RATES: [u32; 15] = [
    6000, 8000, 9600, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000,
    192000,
];
const MONO: u32 = 0x4;
const FINAL_BLOCK: u32 = 0x1000;

/// The plugin.
pub struct WavPack;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The first block's facts: (total samples, sample rate, channels).
fn stream_facts(file: &File) -> Result<(Option<u64>, Option<u32>, u32), String> {
    let mut at = 0u64;
    let mut channels = 0u32;
    let mut first: Option<(Option<u64>, Option<u32>)> = None;
    for _ in 0..MAX_BLOCKS {
        let h = file.read_exact_at(at, 32)?;
        if &h[..4] != b"wvpk" {
            return Err(format!("no WavPack block at {at}"));
        }
        let size = u64::from(u32_at(&h, 4)) + 8;
        let flags = u32_at(&h, 24);
        if first.is_none() {
            let low = u32_at(&h, 12);
            let total = (low != u32::MAX).then(|| (u64::from(h[11]) << 32) | u64::from(low));
            let rate = RATES.get(((flags >> 23) & 0xf) as usize).copied();
            first = Some((total, rate));
        }
        channels += if flags & MONO != 0 { 1 } else { 2 };
        if flags & FINAL_BLOCK != 0 || size < 32 {
            break;
        }
        at += size;
    }
    let (total, rate) = first.ok_or("no WavPack block")?;
    Ok((total, rate, channels))
}

/// The APEv2 tag's text items, (key, value) per value.
fn ape_items(file: &File) -> Result<Vec<(String, String)>, String> {
    let len = file.len();
    let mut end = len;
    if len >= 128 && file.read_exact_at(len - 128, 3)? == b"TAG" {
        end = len - 128;
    }
    if end < 32 {
        return Ok(Vec::new());
    }
    let footer = file.read_exact_at(end - 32, 32)?;
    if &footer[..8] != b"APETAGEX" {
        return Ok(Vec::new());
    }
    let (size, count) = (u32_at(&footer, 12), u32_at(&footer, 16));
    if !(32..=MAX_TAG).contains(&size) || u64::from(size) > end || count > MAX_ITEMS {
        return Err(format!(
            "an APEv2 tag of {size} bytes and {count} items is not plausible"
        ));
    }
    let items = file.read_exact_at(end - u64::from(size), size as usize - 32)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..count {
        if at + 8 > items.len() {
            break;
        }
        let vlen = u32_at(&items, at) as usize;
        let flags = u32_at(&items, at + 4);
        let key_start = at + 8;
        let Some(nul) = items[key_start..].iter().position(|b| *b == 0) else {
            break;
        };
        let key = String::from_utf8_lossy(&items[key_start..key_start + nul]).into_owned();
        let v_start = key_start + nul + 1;
        let Some(value) = items.get(v_start..v_start.saturating_add(vlen)) else {
            break;
        };
        // Text items only (flags bits 1-2 = 0); binary ones (pictures) are skipped.
        if (flags >> 1) & 3 == 0 {
            for v in String::from_utf8_lossy(value).split('\0') {
                if !v.is_empty() {
                    out.push((key.clone(), v.to_string()));
                }
            }
        }
        at = v_start + vlen;
    }
    Ok(out)
}

impl Format for WavPack {
    const EXTENSIONS: &'static str = "wv";

    fn read(file: &File) -> Result<Vec<(String, String)>, String> {
        let (total, rate, channels) = stream_facts(file)?;
        let mut out = ape_items(file)?;
        if let Some(rate) = rate {
            out.push(("sample_rate".into(), rate.to_string()));
            if let Some(total) = total {
                let ms = total * 1000 / u64::from(rate);
                out.push(("duration_ms".into(), ms.to_string()));
                if let Some(bps) = (file.len() * 8 * 1000).checked_div(ms) {
                    out.push(("bitrate".into(), bps.to_string()));
                }
            }
        }
        out.push(("channels".into(), channels.to_string()));
        Ok(out)
    }
}

export_plugin!(name = "wavpack", version = "1.0.0", format = WavPack);

#[cfg(test)]
mod tests {
    use super::*;
    use musicfs_plugin_api::OK;

    fn run(bytes: Vec<u8>) -> (i32, Vec<(String, String)>) {
        musicfs_plugin_api::read_format_bytes::<WavPack>(&bytes)
    }

    fn block(flags: u32, total: u32) -> Vec<u8> {
        let mut b = b"wvpk".to_vec();
        b.extend(24u32.to_le_bytes()); // ckSize: 32 - 8
        b.extend([0x10, 0x04, 0, 0]);
        b.extend(total.to_le_bytes());
        b.extend([0u8; 8]);
        b.extend(flags.to_le_bytes());
        b.extend([0u8; 4]);
        b
    }

    fn ape(items: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in items {
            body.extend((v.len() as u32).to_le_bytes());
            body.extend(0u32.to_le_bytes());
            body.extend(k.as_bytes());
            body.push(0);
            body.extend(v.as_bytes());
        }
        let mut f = b"APETAGEX".to_vec();
        f.extend(2000u32.to_le_bytes());
        f.extend(((body.len() + 32) as u32).to_le_bytes());
        f.extend((items.len() as u32).to_le_bytes());
        f.extend([0u8; 12]);
        body.extend(f);
        body
    }

    #[test]
    fn reads_tags_and_facts() {
        let mut file = block((9 << 23) | FINAL_BLOCK, 88_200);
        file.extend(ape(&[("Title", "So What"), ("Artist", "A\0B")]));
        let (rc, out) = run(file);
        assert_eq!(rc, OK);
        let get = |k: &str| {
            out.iter()
                .filter(|(x, _)| x == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("Title"), ["So What"]);
        assert_eq!(get("Artist"), ["A", "B"]);
        assert_eq!(get("sample_rate"), ["44100"]);
        assert_eq!(get("duration_ms"), ["2000"]);
        assert_eq!(get("channels"), ["2"]);
    }

    #[test]
    fn hostile_input_fails_cleanly() {
        assert_ne!(run(b"not wavpack at all, just text....".to_vec()).0, OK);
        assert_ne!(run(Vec::new()).0, OK);
        // A tag claiming more than the file holds.
        let mut file = block(9 << 23 | FINAL_BLOCK, 10);
        let mut tag = ape(&[("Title", "x")]);
        let n = tag.len();
        tag[n - 20..n - 16].copy_from_slice(&(1u32 << 30).to_le_bytes());
        file.extend(tag);
        assert_ne!(run(file).0, OK);
        // Items that run past the tag's end stop the walk, not the plugin.
        let mut file = block(9 << 23 | FINAL_BLOCK, 10);
        let mut tag = ape(&[("Title", "x")]);
        tag[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        file.extend(tag);
        assert_eq!(run(file).0, OK);
    }
}
