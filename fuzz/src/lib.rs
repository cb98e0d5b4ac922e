//! Fuzzing on the stable toolchain: proptest drives every target with random input and with
//! mutations of the seed corpus (`fuzz/corpus/`, tiny tagged files of each container). The
//! targets (`tests/targets.rs`, each named `fuzz_*`) only require that nothing panics or
//! hangs: a malformed input must come back as an error. `tools/fuzz.sh CASES` runs them
//! all with `PROPTEST_CASES=CASES`; `cargo test` runs a short pass (proptest's default 256
//! cases each). A failure prints the minimal input; it then becomes a regression test in
//! the crate whose parser failed.

use std::io;
use std::path::PathBuf;

use proptest::prelude::*;

/// An input held in memory, as an origin's source.
#[derive(Debug)]
pub struct Bytes(pub Vec<u8>);

impl musicfs_storage::origin::Source for Bytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }

    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

/// The seed corpus: (file name, bytes).
pub fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (tools/fuzz-corpus.sh makes it)", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("corpus file"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus in {}", dir.display());
    out
}

/// One change to an input.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips a bit.
    Flip(usize, u8),
    /// Sets a byte.
    Set(usize, u8),
    /// Writes a 32-bit value (big and little endian) often found at edges.
    Word(usize, u32, bool),
    /// Cuts the input to this length.
    Truncate(usize),
    /// Inserts bytes.
    Insert(usize, Vec<u8>),
    /// Removes a range.
    Remove(usize, usize),
    /// Repeats a range in place.
    Repeat(usize, usize, u8),
}

fn interesting() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7f),
        Just(0xff),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        any::<u32>(),
    ]
}

/// A random mutation (positions are taken modulo the input's length).
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Mutation::Set(p, v)),
        (any::<usize>(), interesting(), any::<bool>())
            .prop_map(|(p, v, be)| Mutation::Word(p, v, be)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        (any::<usize>(), 1usize..256).prop_map(|(p, n)| Mutation::Remove(p, n)),
        (any::<usize>(), 1usize..64, 1u8..8).prop_map(|(p, n, k)| Mutation::Repeat(p, n, k)),
    ]
}

/// `input` with `m` applied.
pub fn apply(input: &mut Vec<u8>, m: &Mutation) {
    let len = input.len();
    let at = |p: usize| if len == 0 { 0 } else { p % len };
    match m {
        Mutation::Flip(p, b) if len > 0 => input[at(*p)] ^= 1 << b,
        Mutation::Set(p, v) if len > 0 => input[at(*p)] = *v,
        Mutation::Word(p, v, be) if len >= 4 => {
            let p = at(*p).min(len - 4);
            let bytes = if *be {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            input[p..p + 4].copy_from_slice(&bytes);
        }
        Mutation::Truncate(n) => input.truncate(if len == 0 { 0 } else { n % (len + 1) }),
        Mutation::Insert(p, b) => {
            let p = if len == 0 { 0 } else { p % (len + 1) };
            input.splice(p..p, b.iter().copied());
        }
        Mutation::Remove(p, n) if len > 0 => {
            let p = at(*p);
            input.drain(p..(p + n).min(len));
        }
        Mutation::Repeat(p, n, k) if len > 0 => {
            let p = at(*p);
            let piece: Vec<u8> = input[p..(p + n).min(len)].to_vec();
            for _ in 0..*k {
                input.splice(p..p, piece.iter().copied());
            }
        }
        _ => {}
    }
}

/// A seed from the corpus (those whose name ends with one of `exts`, or any) with up to
/// eight mutations: (seed name, input).
pub fn mutated(exts: &'static [&'static str]) -> impl Strategy<Value = (String, Vec<u8>)> {
    let seeds: Vec<(String, Vec<u8>)> = corpus()
        .into_iter()
        .filter(|(n, _)| exts.is_empty() || exts.iter().any(|e| n.ends_with(e)))
        .collect();
    assert!(!seeds.is_empty(), "no seed for {exts:?}");
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(), 0..8),
    )
        .prop_map(|((name, mut bytes), ms)| {
            for m in &ms {
                apply(&mut bytes, m);
            }
            (name, bytes)
        })
}
