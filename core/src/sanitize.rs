//! Turning arbitrary tag text into one safe path component.
//!
//! Tags are free text: they hold `/`, NUL, line breaks, decomposed accents and titles longer
//! than any filesystem allows in a name. Every rendered component goes through
//! [`component`] (or [`file_name`] for a name with an extension), which guarantees:
//!
//! - no `/`: it becomes U+2215 DIVISION SLASH `∕`, which looks like a slash, so "AC/DC"
//!   stays readable instead of turning into "AC_DC" or a two-level path;
//! - no NUL and no control character (`char::is_control`): they are removed;
//! - Unicode NFC, so a title tagged decomposed ("Beyonce\u{301}") and one tagged composed
//!   ("Beyoncé") give the same name, and the name is what macOS/Linux tools type back;
//! - no leading or trailing whitespace;
//! - never empty (`_`), never `.` (`_`) or `..` (`__`);
//! - at most [`MAX_NAME_BYTES`] bytes, cut on a character boundary; [`file_name`] cuts the
//!   stem and keeps the extension whole.
//!
//! The output is a `String`, so it is valid UTF-8 by construction, and sanitising it again
//! returns it unchanged. Nothing here panics, whatever the input.

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// Longest name, in bytes, that Linux filesystems (and FUSE) accept for one component.
pub const MAX_NAME_BYTES: usize = 255;

/// What `/` is replaced with: U+2215 DIVISION SLASH.
pub const SLASH_REPLACEMENT: char = '\u{2215}';

/// Longest extension [`file_name`] keeps whole; longer ones are cut so that at least a
/// one-byte stem and the dot still fit in [`MAX_NAME_BYTES`].
const MAX_EXT_BYTES: usize = MAX_NAME_BYTES - 2;

/// Sanitises `s` into one path component that satisfies every rule of this module.
pub fn component(s: &str) -> String {
    component_owned(s.to_owned())
}

/// [`component`] on an owned string, reusing its buffer when the text is already clean.
pub fn component_owned(s: String) -> String {
    let mut name = clean(s);
    truncate_trimmed(&mut name, MAX_NAME_BYTES);
    not_empty_or_dots(name)
}

/// Sanitises a file name made of `stem` and `ext` (without the dot): both are cleaned as
/// [`component`] does, and when the name is too long the stem is cut, never the extension.
///
/// An extension that cleans to nothing yields `component(stem)`: a name without a dot is
/// better than one ending in a bare dot.
pub fn file_name(stem: &str, ext: &str) -> String {
    file_name_owned(stem.to_owned(), ext)
}

/// [`file_name`] on an owned stem, reusing its buffer when the text is already clean.
pub fn file_name_owned(stem: String, ext: &str) -> String {
    let mut ext = clean(ext.to_owned());
    truncate_trimmed(&mut ext, MAX_EXT_BYTES);
    if ext.is_empty() {
        return component_owned(stem);
    }
    let mut name = clean(stem);
    truncate_trimmed(&mut name, MAX_NAME_BYTES - 1 - ext.len());
    if name.is_empty() {
        name.push('_');
    }
    name.push('.');
    name.push_str(&ext);
    // The dot is a starter that composes with nothing, so the joined name is NFC when both
    // halves are; this only guards that reasoning.
    if !is_nfc(&name) {
        return component_owned(name);
    }
    name
}

/// Removes controls, replaces `/`, normalises to NFC and trims: every rule but length and
/// emptiness.
fn clean(s: String) -> String {
    // Controls go before NFC: removing one between a letter and a combining mark would
    // otherwise leave a pair that NFC composes, and sanitising twice would differ.
    let filtered = if needs_filter(&s) {
        s.chars()
            .filter(|c| !c.is_control())
            .map(|c| if c == '/' { SLASH_REPLACEMENT } else { c })
            .collect()
    } else {
        s
    };
    let mut normalised = if is_nfc(&filtered) {
        filtered
    } else {
        filtered.nfc().collect()
    };
    let end = normalised.trim_end().len();
    normalised.truncate(end);
    let start = normalised.len() - normalised.trim_start().len();
    normalised.drain(..start);
    normalised
}

/// Whether `s` holds a `/` or a control character.
fn needs_filter(s: &str) -> bool {
    // Byte pre-check: C0 controls, `/` and DEL are single bytes, and every C1 control
    // (U+0080..U+009F) starts with 0xC2; only a hit needs the exact per-char test.
    // A fold without early exit, so the compiler vectorises it; names are short.
    let suspicious = s.bytes().fold(false, |hit, b| {
        hit | (b < 0x20) | (b == b'/') | (b == 0x7f) | (b == 0xc2)
    });
    suspicious && s.chars().any(|c| c == '/' || c.is_control())
}

fn is_nfc(s: &str) -> bool {
    // In UTF-8, text with no byte >= 0xCC is all below U+0300: see `is_inert`.
    if s.bytes().fold(0, u8::max) < 0xcc {
        return true;
    }
    // The Unicode quick check costs two table lookups per char; skip the inert prefix
    // (most of any Latin or CJK name) and check only from the first other char on. That
    // is sound because an inert char leaves the check in its initial state.
    match s.char_indices().find(|(_, c)| !is_inert(*c)) {
        None => true,
        Some((at, _)) => is_nfc_quick(s[at..].chars()) == IsNormalized::Yes,
    }
}

/// Characters that are NFC_QC=Yes with combining class 0, which is all the quick check
/// needs to leave its state as it starts: everything below the combining diacritics
/// (U+0300) and the CJK unified ideographs. Checked against the Unicode tables in the
/// tests. (They may still compose with a following mark; that mark is not inert.)
fn is_inert(c: char) -> bool {
    c < '\u{300}' || ('\u{3400}'..='\u{9fff}').contains(&c)
}

/// Cuts `s` to at most `max` bytes on a char boundary, then trims trailing whitespace the
/// cut may have exposed. A prefix of an NFC string is NFC, so normalisation holds.
fn truncate_trimmed(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    let kept = s.trim_end().len();
    s.truncate(kept);
}

fn not_empty_or_dots(s: String) -> String {
    match s.as_str() {
        "" | "." => "_".to_owned(),
        ".." => "__".to_owned(),
        _ => s,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slash_becomes_division_slash_so_acdc_stays_readable() {
        assert_eq!(component("AC/DC"), "AC\u{2215}DC");
    }

    #[test]
    fn nul_and_controls_are_removed() {
        assert_eq!(component("a\0b\nc\td\u{7f}e\u{85}f"), "abcdef");
    }

    #[test]
    fn decomposed_and_composed_names_are_equal() {
        let nfd = "Beyonce\u{301}";
        let nfc = "Beyonc\u{e9}";
        assert_ne!(nfd, nfc);
        assert_eq!(component(nfd), component(nfc));
        assert_eq!(component(nfd), nfc);
    }

    #[test]
    fn control_between_letter_and_mark_does_not_break_idempotence() {
        let once = component("e\0\u{301}");
        assert_eq!(once, "\u{e9}");
        assert_eq!(component(&once), once);
    }

    #[test]
    fn inert_chars_leave_the_quick_check_in_its_initial_state() {
        use unicode_normalization::char::canonical_combining_class;
        let inert = (0..0x300u32)
            .chain(0x3400..=0x9fff)
            .filter_map(char::from_u32);
        for c in inert {
            assert!(is_inert(c));
            assert_eq!(canonical_combining_class(c), 0, "{c:?}");
            let q = is_nfc_quick(std::iter::once(c));
            assert_eq!(q, IsNormalized::Yes, "{c:?}");
        }
        assert!(!is_inert('\u{300}') && !is_inert('\u{3099}'));
        assert!(!is_nfc("e\u{301}"));
        assert!(!is_nfc("\u{65e5}e\u{301}"));
        assert!(!is_nfc("\u{65e5}\u{2126}"));
        assert!(is_nfc("\u{65e5}\u{672c}\u{e9}"));
    }

    #[test]
    fn c1_controls_are_removed_and_other_latin1_is_kept() {
        assert_eq!(
            component("a\u{80}b\u{9f}c\u{a0}\u{a9}d"),
            "abc\u{a0}\u{a9}d"
        );
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(component("  Abbey Road \u{3000}"), "Abbey Road");
    }

    #[test]
    fn empty_and_blank_become_underscore() {
        assert_eq!(component(""), "_");
        assert_eq!(component(" \0 "), "_");
    }

    #[test]
    fn dot_names_are_replaced() {
        assert_eq!(component("."), "_");
        assert_eq!(component(".."), "__");
        assert_eq!(component(" .. "), "__");
        assert_eq!(component("..."), "...");
        assert_eq!(component(".5: The Gray Chapter"), ".5: The Gray Chapter");
    }

    #[test]
    fn long_multibyte_name_is_cut_on_a_char_boundary() {
        // 100 × 3-byte chars = 300 bytes; 255 is a multiple of 3, so use a 2-byte prefix
        // to force a cut inside a char.
        let s = format!("ab{}", "\u{65e5}".repeat(100));
        let out = component(&s);
        assert!(out.len() <= MAX_NAME_BYTES);
        assert_eq!(out.len(), 2 + 3 * 84);
        assert!(s.starts_with(&out));
    }

    #[test]
    fn cut_that_exposes_a_space_trims_it() {
        let s = format!("{} tail", "a".repeat(MAX_NAME_BYTES - 1));
        let out = component(&s);
        assert_eq!(out, "a".repeat(MAX_NAME_BYTES - 1));
    }

    #[test]
    fn file_name_keeps_the_extension_when_cutting() {
        let stem = "\u{e9}".repeat(150); // 300 bytes
        let out = file_name(&stem, "flac");
        assert!(out.len() <= MAX_NAME_BYTES);
        assert!(out.ends_with(".flac"));
        assert_eq!(out.len(), 2 * 125 + ".flac".len());
    }

    #[test]
    fn file_name_with_empty_stem_gets_underscore() {
        assert_eq!(file_name("", "mp3"), "_.mp3");
        assert_eq!(file_name(" / ", "mp3"), "\u{2215}.mp3");
    }

    #[test]
    fn file_name_without_extension_is_a_component() {
        assert_eq!(file_name("..", ""), "__");
        assert_eq!(file_name("x", " \0"), "x");
    }

    #[test]
    fn file_name_cuts_an_absurd_extension() {
        let out = file_name("stem", &"e".repeat(400));
        assert!(out.len() <= MAX_NAME_BYTES);
        assert!(out.starts_with("s."));
    }

    /// Strings rich in the characters the rules are about.
    pub(crate) fn nasty_string() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z /.\\x00-\\x1f\\x7f\u{85}\u{301}\u{308}\u{e9}\u{65e5}\u{1f3b5} \u{3000}()\\[\\]]{0,40}",
            "[\u{e9}\u{65e5}\u{1f3b5}a-z/ ]{200,320}",
            Just(".".to_owned()),
            Just("..".to_owned()),
        ]
    }

    pub(crate) fn assert_valid_component(c: &str) {
        assert!(!c.is_empty(), "{c:?} is empty");
        assert!(c != "." && c != "..", "{c:?} is a dot name");
        assert!(c.len() <= MAX_NAME_BYTES, "{c:?} is {} bytes", c.len());
        assert!(!c.contains('/'), "{c:?} has a slash");
        assert!(!c.chars().any(char::is_control), "{c:?} has a control");
        assert_eq!(c.trim(), c, "{c:?} is not trimmed");
        assert!(is_nfc(c) || c.nfc().eq(c.chars()), "{c:?} is not NFC");
        assert_eq!(component(c), c, "{c:?} changes when sanitised again");
    }

    proptest! {
        #[test]
        fn component_output_satisfies_every_rule(s in nasty_string()) {
            assert_valid_component(&component(&s));
        }

        #[test]
        fn fast_nfc_check_never_accepts_unnormalised_text(s in nasty_string()) {
            if is_nfc(&s) {
                prop_assert!(s.nfc().eq(s.chars()));
            }
        }

        #[test]
        fn component_of_nfd_equals_component_of_nfc(s in nasty_string()) {
            let nfd: String = s.nfd().collect();
            prop_assert_eq!(component(&nfd), component(&s));
        }

        #[test]
        fn file_name_satisfies_every_rule_and_keeps_the_extension(
            stem in nasty_string(),
            ext in prop_oneof![
                Just("flac".to_owned()),
                Just("MP3".to_owned()),
                "[a-z0-9]{1,10}",
                nasty_string(),
            ],
        ) {
            let name = file_name(&stem, &ext);
            assert_valid_component(&name);
            let clean_ext = clean(ext.clone());
            if !clean_ext.is_empty() && clean_ext.len() <= MAX_EXT_BYTES {
                let suffix = format!(".{clean_ext}");
                prop_assert!(name.ends_with(&suffix), "{name:?} lost {suffix:?}");
            }
        }
    }
}
