//! Example metadata plugin: suggests Title Case for a title, album, artist or album
//! artist written all in capitals or all in lower case (`SO WHAT` → `So What`,
//! `kind of blue` → `Kind of Blue`). Mixed case is left as the tagger wrote it.

use musicfs_plugin_api::{export_plugin, Metadata};

/// Words kept lower case inside a title.
const SMALL: [&str; 14] = [
    "a", "an", "and", "as", "at", "but", "by", "for", "in", "of", "on", "or", "the", "to",
];

/// `s` in Title Case.
pub fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, word) in s.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let lower = word.to_lowercase();
        if i > 0 && SMALL.contains(&lower.as_str()) {
            out.push_str(&lower);
            continue;
        }
        let mut chars = lower.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// The plugin.
pub struct TitleCase;

impl Metadata for TitleCase {
    fn suggest(tags: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        Ok(tags
            .iter()
            .filter(|(k, _)| matches!(*k, "title" | "album" | "artist" | "albumartist"))
            .filter(|(_, v)| {
                let cased = v.chars().any(char::is_alphabetic);
                cased && (v.to_uppercase() == *v || v.to_lowercase() == *v)
            })
            .map(|(k, v)| (k.to_string(), title_case(v)))
            .filter(|(k, v)| tags.iter().any(|(k2, v2)| k2 == k && v2 != v))
            .collect())
    }
}

export_plugin!(name = "titlecase", version = "1.0.0", metadata = TitleCase);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitals_and_lower_case_become_title_case_and_mixed_case_stays() {
        assert_eq!(title_case("SO WHAT"), "So What");
        assert_eq!(title_case("kind of blue"), "Kind of Blue");
        let got = TitleCase::suggest(&[
            ("title", "ALL BLUES"),
            ("album", "Kind of Blue"),
            ("artist", "miles davis"),
            ("genre", "JAZZ"),
            ("title2", "x"),
        ])
        .unwrap();
        assert_eq!(
            got,
            [
                ("title".to_string(), "All Blues".to_string()),
                ("artist".to_string(), "Miles Davis".to_string())
            ]
        );
    }
}
