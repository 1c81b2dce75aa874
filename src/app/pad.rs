//! The left-pad function itself, in characters (Unicode scalar values), not bytes.

/// How many copies of the pad character bring `s` up to `len` characters.
/// A `len` that is negative or not above the length of `s` needs none.
pub fn pad_count(s: &str, len: i64) -> usize {
    pad_count_for(s.chars().count(), len)
}

/// [`pad_count`] for a string already known to be `have` characters long.
pub fn pad_count_for(have: usize, len: i64) -> usize {
    match usize::try_from(len) {
        Ok(want) if want > have => want - have,
        _ => 0,
    }
}

/// Appends `s`, left-padded with `pad` to `len` characters, to `out`.
///
/// The server never builds this string (it writes the JSON escape of the padding and of
/// `s` straight into the response); this is the plain form, for tests and benchmarks.
pub fn leftpad_into(out: &mut String, s: &str, len: i64, pad: char) {
    let count = pad_count(s, len);
    out.reserve(count * pad.len_utf8() + s.len());
    out.extend(std::iter::repeat_n(pad, count));
    out.push_str(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftpad(s: &str, len: i64, pad: char) -> String {
        let mut out = String::new();
        leftpad_into(&mut out, s, len, pad);
        out
    }

    #[test]
    fn pads_to_length() {
        assert_eq!(leftpad("test", 10, '*'), "******test");
        assert_eq!(leftpad("", 3, ' '), "   ");
    }

    #[test]
    fn short_or_negative_len_returns_input() {
        assert_eq!(leftpad("test", 4, '*'), "test");
        assert_eq!(leftpad("test", 2, '*'), "test");
        assert_eq!(leftpad("test", 0, '*'), "test");
        assert_eq!(leftpad("test", -5, '*'), "test");
        assert_eq!(leftpad("test", i64::MIN, '*'), "test");
    }

    #[test]
    fn counts_characters_not_bytes() {
        // "héllo" is 5 characters in 6 bytes; "😀" is one character in 4 bytes.
        assert_eq!(leftpad("héllo", 7, '-'), "--héllo");
        assert_eq!(leftpad("😀", 3, 'é'), "éé😀");
        assert_eq!(pad_count("😀😀", 2), 0);
        assert_eq!(leftpad("a", 4, '😀'), "😀😀😀a");
    }

    #[test]
    fn padded_length_is_max_of_len_and_input() {
        for s in ["", "a", "héllo", "日本語テキスト"] {
            for len in -2..12 {
                let chars = leftpad(s, len, '·').chars().count() as i64;
                assert_eq!(chars, len.max(s.chars().count() as i64));
            }
        }
    }
}
