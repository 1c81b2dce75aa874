//! JSON string escaping, byte-for-byte like Go's `encoding/json` default encoder.
//!
//! The service promises the same bodies as the Go original, so the rules are Go's
//! (with `SetEscapeHTML(true)`, the default), as README.md, "The API", fixes it:
//! `"` and `\` are backslash-escaped; `\n`, `\r`, `\t` use short escapes; every other
//! control character is `\u00xx` (lower-case hex, as Go writes it); `<`, `>`, `&` are
//! `\u003c`, `\u003e`, `\u0026`; U+2028 and U+2029 are `\u2028` and `\u2029`; all else,
//! DEL and non-ASCII included, is copied as raw UTF-8.
//!
//! Input is `&str`, so it is valid UTF-8 and Go's `\ufffd` substitution never applies.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What to do with each byte: 0 copies it, `u` means `\u00xx`, anything else is the
/// letter after the backslash. `L` marks 0xE2, the lead byte of U+2028/U+2029.
const ACTIONS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'<' as usize] = b'u';
    t[b'>' as usize] = b'u';
    t[b'&' as usize] = b'u';
    t[0xE2] = b'L';
    t
};

/// Walks `s` and hands `emit` the escaped output in pieces: runs of raw bytes and escapes.
/// Both the writer and the length counter use it, so they cannot disagree.
#[inline]
fn walk_escaped(s: &str, mut emit: impl FnMut(&[u8])) {
    let bytes = s.as_bytes();
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let action = ACTIONS[bytes[i] as usize];
        if action == 0 {
            i += 1;
            continue;
        }
        if action == b'L' {
            // U+2028 is E2 80 A8 and U+2029 is E2 80 A9; other E2 sequences are copied.
            let is_separator = bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xA8) | Some(0xA9));
            if !is_separator {
                i += 1;
                continue;
            }
            emit(&bytes[run_start..i]);
            emit(if bytes[i + 2] == 0xA8 {
                b"\\u2028"
            } else {
                b"\\u2029"
            });
            i += 3;
            run_start = i;
            continue;
        }
        emit(&bytes[run_start..i]);
        if action == b'u' {
            let b = bytes[i];
            emit(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xF) as usize],
            ]);
        } else {
            emit(&[b'\\', action]);
        }
        i += 1;
        run_start = i;
    }
    emit(&bytes[run_start..]);
}

/// Appends `s`, escaped for use inside a JSON string literal, to `out`.
pub fn write_escaped(out: &mut Vec<u8>, s: &str) {
    walk_escaped(s, |piece| out.extend_from_slice(piece));
}

/// The number of bytes [`write_escaped`] would append for `s`.
pub fn escaped_len(s: &str) -> usize {
    if s.bytes().all(|b| ACTIONS[usize::from(b)] == 0) {
        return s.len();
    }
    let mut len = 0;
    walk_escaped(s, |piece| len += piece.len());
    len
}

/// A string to write escaped, with its escaped length measured once: a response needs
/// the length for `Content-Length` before it writes the body.
#[derive(Clone, Copy, Debug)]
pub struct EscapedStr<'s> {
    text: &'s str,
    len: usize,
}

impl<'s> EscapedStr<'s> {
    pub fn new(text: &'s str) -> EscapedStr<'s> {
        EscapedStr {
            text,
            len: escaped_len(text),
        }
    }

    /// The bytes [`EscapedStr::write`] appends.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        // Every escape is longer than what it replaces, so an unchanged length means
        // there is nothing to escape (the usual case): one copy.
        if self.len == self.text.len() {
            out.extend_from_slice(self.text.as_bytes());
        } else {
            write_escaped(out, self.text);
        }
    }
}

/// One character, escaped: at most 6 bytes (`\u00xx`; a raw character is at most 4).
#[derive(Clone, Copy, Debug)]
pub struct EscapedChar {
    bytes: [u8; 6],
    len: u8,
}

impl EscapedChar {
    pub fn new(c: char) -> EscapedChar {
        // The usual pad (`*`, `0`, space): one byte, as is. Built directly, since the
        // general path's small copies, read back at once, stall store forwarding.
        if c.is_ascii() && ACTIONS[c as usize] == 0 {
            return EscapedChar {
                bytes: [c as u8, 0, 0, 0, 0, 0],
                len: 1,
            };
        }
        let mut utf8 = [0u8; 4];
        let mut escaped = EscapedChar {
            bytes: [0; 6],
            len: 0,
        };
        walk_escaped(c.encode_utf8(&mut utf8), |piece| {
            let at = escaped.len as usize;
            escaped.bytes[at..at + piece.len()].copy_from_slice(piece);
            escaped.len += piece.len() as u8;
        });
        escaped
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Appends this character `count` times to `out`.
    pub fn write_repeated(&self, out: &mut Vec<u8>, count: usize) {
        match self.as_bytes() {
            [single] => out.resize(out.len() + count, *single),
            many => {
                out.reserve(many.len() * count);
                for _ in 0..count {
                    out.extend_from_slice(many);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `s` escaped, checking that every way to escape it agrees on the bytes and length.
    fn escape(s: &str) -> String {
        let mut out = Vec::new();
        write_escaped(&mut out, s);
        assert_eq!(out.len(), escaped_len(s), "length of {s:?}");
        let measured = EscapedStr::new(s);
        let mut again = Vec::new();
        measured.write(&mut again);
        assert_eq!((again.len(), &again), (measured.len(), &out), "{s:?}");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_text_is_copied() {
        assert_eq!(escape(""), "");
        assert_eq!(escape("hello world"), "hello world");
        assert_eq!(
            escape("'single' `tick` ~!@#$%^*()_+=-{}[]|:;,.?/"),
            "'single' `tick` ~!@#$%^*()_+=-{}[]|:;,.?/"
        );
    }

    #[test]
    fn quote_and_backslash() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }

    #[test]
    fn short_escapes_for_newline_return_tab() {
        assert_eq!(escape("\n\r\t"), r"\n\r\t");
    }

    #[test]
    fn other_control_characters_are_u00xx_lowercase() {
        assert_eq!(escape("\u{0}"), r"\u0000");
        assert_eq!(escape("\u{8}\u{c}"), r"\u0008\u000c");
        assert_eq!(escape("\u{1b}[0m"), r"\u001b[0m");
        assert_eq!(escape("\u{1f}"), r"\u001f");
    }

    #[test]
    fn html_characters_are_escaped() {
        assert_eq!(escape("<a>&"), r"\u003ca\u003e\u0026");
    }

    #[test]
    fn line_and_paragraph_separators_are_escaped() {
        assert_eq!(escape("a\u{2028}b\u{2029}c"), r"a\u2028b\u2029c");
    }

    #[test]
    fn other_characters_are_raw_utf8() {
        // DEL, Latin-1, other E2-led characters (… is E2 80 A6), astral plane.
        assert_eq!(
            escape("\u{7f}é…€😀\u{2027}\u{202a}"),
            "\u{7f}é…€😀\u{2027}\u{202a}"
        );
    }

    #[test]
    fn escaped_char_matches_string_escaping() {
        // Every ASCII character (fast path and escapes), then a sample beyond.
        let sample = [0x2027, 0x2028, 0x2029, 0xfffd, 0x1f600];
        for c in (0..0x300).chain(sample).filter_map(char::from_u32) {
            assert_eq!(
                EscapedChar::new(c).as_bytes(),
                escape(&c.to_string()).as_bytes()
            );
        }
    }

    #[test]
    fn write_repeated_repeats_single_and_multi_byte() {
        let mut out = b"x".to_vec();
        EscapedChar::new('*').write_repeated(&mut out, 3);
        EscapedChar::new('<').write_repeated(&mut out, 2);
        EscapedChar::new('é').write_repeated(&mut out, 0);
        assert_eq!(out, br"x***\u003c\u003c");
    }
}
