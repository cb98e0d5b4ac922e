//! Percent-escapes in origin specs: decoding them on parse, and escaping on display exactly
//! the characters that would otherwise change how the displayed spec parses.

use std::fmt;

/// `part` with its `%XX` escapes decoded (to bytes: a local path need not be UTF-8).
pub(super) fn percent_decode(part: &str) -> Result<Vec<u8>, &'static str> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or("a '%' must start a %XX escape")?;
            let hi = hex_value(hex[0]).ok_or("a '%' must start a %XX escape")?;
            let lo = hex_value(hex[1]).ok_or("a '%' must start a %XX escape")?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Which characters a component must escape so that parsing finds it again.
#[derive(Clone, Copy)]
pub(super) enum Part {
    /// A path: keeps `/`.
    Path,
    /// One path segment (an SMB share): escapes `/` too.
    Segment,
    /// A user name.
    User,
    /// A query key or value.
    Query,
}

pub(super) fn escaped(f: &mut fmt::Formatter<'_>, text: &str, part: Part) -> fmt::Result {
    for c in text.chars() {
        let special = match part {
            Part::Path => matches!(c, '?' | '#'),
            Part::Segment => matches!(c, '?' | '#' | '/'),
            Part::User => matches!(c, '?' | '#' | '/' | ':' | '@' | '[' | ']'),
            Part::Query => matches!(c, '#' | '&' | '='),
        };
        if special || c == '%' || c.is_ascii_control() || c == ' ' {
            write!(f, "%{:02X}", c as u32)?;
        } else {
            write!(f, "{c}")?;
        }
    }
    Ok(())
}
