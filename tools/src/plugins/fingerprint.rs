//! A track's Chromaprint fingerprint, as AcoustID takes it: the audio decoded by symphonia
//! (the first [`MAX_SECONDS`]), fingerprinted with the `test2` configuration (AcoustID's),
//! compressed and base64url-encoded without padding.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine as _;
use musicfs_storage::origin::Source;
use rusty_chromaprint::{Configuration, FingerprintCompressor, Fingerprinter};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

/// How much audio is fingerprinted (AcoustID's clients use the first two minutes).
pub const MAX_SECONDS: u64 = 120;

/// A source read as a stream, by offset.
struct Stream {
    source: Arc<dyn Source>,
    pos: u64,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.source.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Stream {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.source.len() as i128;
        let at = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => len + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if at < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = at as u64;
        Ok(self.pos)
    }
}

impl MediaSource for Stream {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.source.len())
    }
}

/// The fingerprint of `source` and the audio's duration in whole seconds.
pub fn fingerprint(source: Arc<dyn Source>) -> Result<(String, u64)> {
    let mss = MediaSourceStream::new(Box::new(Stream { source, pos: 0 }), Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .context("not audio symphonia decodes")?;
    let track = format
        .default_track(TrackType::Audio)
        .context("no audio track")?
        .clone();
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .context("no audio parameters")?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .context("no decoder for this codec")?;
    let config = Configuration::preset_test2();
    let mut printer = Fingerprinter::new(&config);
    let mut started: Option<(u32, usize)> = None;
    let mut frames = 0u64;
    let mut samples: Vec<i16> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e).context("reading the audio"),
        };
        if packet.track_id != track.id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(b) => b,
            Err(SymphoniaError::DecodeError(_)) => continue,
            Err(e) => return Err(e).context("decoding the audio"),
        };
        let (rate, channels) = (buf.spec().rate(), buf.spec().channels().count());
        if started.is_none() {
            printer
                .start(rate, channels as u32)
                .map_err(|e| anyhow::anyhow!("fingerprinter: {e:?}"))?;
            started = Some((rate, channels));
        }
        buf.copy_to_vec_interleaved(&mut samples);
        printer.consume(&samples);
        frames += buf.frames() as u64;
        if frames >= MAX_SECONDS * u64::from(rate) {
            break;
        }
    }
    let (rate, _) = started.context("no audio decoded")?;
    printer.finish();
    let compressed = FingerprintCompressor::from(&config).compress(printer.fingerprint());
    let total = track.num_frames.filter(|n| *n > 0).unwrap_or(frames);
    let seconds = total / u64::from(rate.max(1));
    Ok((
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(compressed),
        seconds,
    ))
}
