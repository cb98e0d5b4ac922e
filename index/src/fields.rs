//! Pure helpers that turn tag strings into [`TrackMeta`](musicfs_core::TrackMeta) fields:
//! `"3/12"` splits, vinyl positions (`A1`), dates and multi-valued lists. Kept apart from
//! the symphonia glue so they can be tested without files.

pub(crate) use musicfs_core::overlay::TagField as Field;

/// Maps a raw tag key (ID3v2 frame id, Vorbis comment name, RIFF INFO id, MP4 atom name),
/// compared case-insensitively, to a field. Used when symphonia could not attach a standard
/// tag: multi-valued ID3v2.4 frames (a string list) and non-numeric positions like `A1`.
pub(crate) fn field_of_raw_key(key: &str) -> Option<Field> {
    let key = key.to_ascii_lowercase();
    Some(match key.as_str() {
        "tit2" | "tt2" | "title" | "inam" | "©nam" => Field::Title,
        "tpe1" | "tp1" | "artist" | "iart" | "©art" => Field::Artist,
        "talb" | "tal" | "album" | "iprd" | "©alb" => Field::Album,
        "tpe2" | "tp2" | "albumartist" | "album artist" | "album_artist" | "aart" => {
            Field::AlbumArtist
        }
        "tcon" | "tco" | "genre" | "ignr" | "©gen" => Field::Genre,
        "tdrc" | "tyer" | "tye" | "date" | "year" | "icrd" | "©day" => Field::Date,
        "trck" | "trk" | "tracknumber" | "track" | "itrk" | "iprt" => Field::Track,
        "tracktotal" | "totaltracks" => Field::TrackTotal,
        "tpos" | "tpa" | "discnumber" | "disc" | "disk" | "disknumber" => Field::Disc,
        "disctotal" | "totaldiscs" | "disktotal" => Field::DiscTotal,
        "tcom" | "tcm" | "composer" | "imus" | "©wrt" => Field::Composer,
        "uslt" | "ult" | "lyrics" | "unsyncedlyrics" | "©lyr" => Field::Lyrics,
        _ => return None,
    })
}

/// Trims a tag value and drops it when nothing is left. NULs are removed because some
/// writers pad with them and they can never appear in a path.
pub(crate) fn clean(value: &str) -> Option<String> {
    let v = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if v.is_empty() {
        return None;
    }
    Some(v.replace('\0', ""))
}

/// Appends every non-empty value not already present, keeping tag order. Exact duplicates
/// come from formats that repeat a raw tag once per standard tag it yields.
pub(crate) fn push_unique(list: &mut Vec<String>, values: impl IntoIterator<Item = String>) {
    for v in values {
        if let Some(v) = clean(&v) {
            if !list.contains(&v) {
                list.push(v);
            }
        }
    }
}

/// Splits a position tag into the position as tagged and an optional total:
/// `"3/12"` → (`3`, 12), `"A1"` → (`A1`, none), `" 03 / 12 "` → (`03`, 12), `"/12"` → (none, 12).
/// A total that is not a number (`"3/x"`) is dropped; the position is kept as text.
pub(crate) fn split_position(value: &str) -> (Option<String>, Option<u32>) {
    match value.split_once('/') {
        Some((pos, total)) => (clean(pos), parse_count(total)),
        None => (clean(value), None),
    }
}

/// Parses a count (`TRACKTOTAL`, the `12` of `3/12`); zero means "not set" in every format
/// we read, so it becomes `None`.
pub(crate) fn parse_count(value: &str) -> Option<u32> {
    let v = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    v.parse::<u32>().ok().filter(|n| *n > 0)
}

/// Normalises a date tag: trimmed, and an ID3v2.4 timestamp separator `T` or a trailing time
/// (`1969-10-22 12:00`) cut off, since only the date part is ever rendered. Values without a
/// single digit (`"unknown"`) are dropped.
pub(crate) fn clean_date(value: &str) -> Option<String> {
    let v = clean(value)?;
    if !v.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let cut = v
        .char_indices()
        .find(|(i, c)| *i >= 4 && (*c == 'T' || *c == ' '))
        .map(|(i, _)| i);
    match cut {
        Some(i) => clean(&v[..i]),
        None => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_position_separates_number_and_total() {
        assert_eq!(split_position("3/12"), (Some("3".into()), Some(12)));
        assert_eq!(split_position(" 03 / 12 "), (Some("03".into()), Some(12)));
        assert_eq!(split_position("7"), (Some("7".into()), None));
    }

    #[test]
    fn split_position_keeps_vinyl_sides_as_text() {
        assert_eq!(split_position("A1"), (Some("A1".into()), None));
        assert_eq!(split_position("B2/8"), (Some("B2".into()), Some(8)));
    }

    #[test]
    fn split_position_drops_missing_or_bad_parts() {
        assert_eq!(split_position("/12"), (None, Some(12)));
        assert_eq!(split_position("3/"), (Some("3".into()), None));
        assert_eq!(split_position("3/x"), (Some("3".into()), None));
        assert_eq!(split_position("3/0"), (Some("3".into()), None));
        assert_eq!(split_position("  "), (None, None));
    }

    #[test]
    fn parse_count_treats_zero_and_garbage_as_absent() {
        assert_eq!(parse_count("12"), Some(12));
        assert_eq!(parse_count(" 9\0"), Some(9));
        assert_eq!(parse_count("0"), None);
        assert_eq!(parse_count("twelve"), None);
    }

    #[test]
    fn clean_date_keeps_years_and_full_dates() {
        assert_eq!(clean_date("1969"), Some("1969".into()));
        assert_eq!(clean_date(" 1969-10-22 "), Some("1969-10-22".into()));
        assert_eq!(clean_date("2001-05-03T12:00:00"), Some("2001-05-03".into()));
        assert_eq!(clean_date("1999-01-02 10:11"), Some("1999-01-02".into()));
    }

    #[test]
    fn clean_date_drops_values_without_digits() {
        assert_eq!(clean_date("unknown"), None);
        assert_eq!(clean_date(""), None);
    }

    #[test]
    fn push_unique_keeps_every_distinct_value_in_order() {
        let mut v = vec!["Alpha".to_string()];
        push_unique(&mut v, ["Beta", "Alpha", " ", "Gamma\0"].map(String::from));
        assert_eq!(v, ["Alpha", "Beta", "Gamma"]);
    }

    #[test]
    fn raw_keys_map_case_insensitively() {
        assert_eq!(field_of_raw_key("TPE1"), Some(Field::Artist));
        assert_eq!(field_of_raw_key("TrackNumber"), Some(Field::Track));
        assert_eq!(field_of_raw_key("ITRK"), Some(Field::Track));
        assert_eq!(field_of_raw_key("TOTALTRACKS"), Some(Field::TrackTotal));
        assert_eq!(field_of_raw_key("comment"), None);
    }
}
