//! Looking at bytes eight at a time (SWAR: SIMD within a register), for the short scans of
//! the request path: a request-target's `?`, a query's delimiters. Portable, no `unsafe`.

/// Each of the eight bytes of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The low seven bits of each byte.
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The eight bytes at `at`, little-endian (the first byte lowest), zero-padded past the end.
pub fn word_at(bytes: &[u8], at: usize) -> u64 {
    if let Some(chunk) = bytes.get(at..at + 8) {
        return u64::from_le_bytes(chunk.try_into().expect("an 8-byte chunk"));
    }
    // The tail, byte by byte: a copy of a variable length would call memcpy.
    let rest = bytes.get(at..).unwrap_or_default();
    rest.iter()
        .rev()
        .fold(0, |word, &b| word << 8 | u64::from(b))
}

/// The high bit of each byte of `word` that equals `b`, and no other bit.
///
/// Exact for every byte, whatever its neighbours: adding 0x7f to a byte's low seven bits
/// never carries out of the byte (the usual `(v - ONES) & !v` can flag a byte after a match).
pub fn bytes_equal(word: u64, b: u8) -> u64 {
    let v = word ^ (ONES * u64::from(b));
    !(((v & LOW7).wrapping_add(LOW7)) | v | LOW7)
}

/// The position of the first `b` in `bytes`.
pub fn find(bytes: &[u8], b: u8) -> Option<usize> {
    let mut at = 0;
    while at < bytes.len() {
        let found = bytes_equal(word_at(bytes, at), b);
        if found != 0 {
            // A zero `b` would also match the padding past the end.
            let i = at + found.trailing_zeros() as usize / 8;
            return (i < bytes.len()).then_some(i);
        }
        at += 8;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_equal_marks_exactly_the_matching_bytes_at_every_position() {
        for wanted in [0u8, b'?', b'&', 0x7f, 0x80, 0xff] {
            for b in 0..=255u8 {
                for at in 0..8 {
                    // Neighbours that could borrow or carry into the byte.
                    for fill in [0u8, 0x01, wanted.wrapping_sub(1), wanted, 0x7f, 0x80, 0xff] {
                        let mut word = [fill; 8];
                        word[at] = b;
                        let expected = (0..8).fold(0u64, |acc, i| {
                            acc | (u64::from(word[i] == wanted) << (8 * i + 7))
                        });
                        let bits = bytes_equal(u64::from_le_bytes(word), wanted);
                        assert_eq!(bits, expected, "{b:#x} at {at} among {fill:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn word_at_pads_the_tail_with_zeros() {
        assert_eq!(word_at(b"abcdefghi", 0), u64::from_le_bytes(*b"abcdefgh"));
        assert_eq!(word_at(b"abcdefghi", 8), u64::from(b'i'));
        assert_eq!(word_at(b"abc", 3), 0);
        assert_eq!(word_at(b"abc", 9), 0);
    }

    proptest::proptest! {
        #[test]
        fn find_agrees_with_position(bytes in proptest::collection::vec(0u8..4, 0..40), b in 0u8..4) {
            proptest::prop_assert_eq!(find(&bytes, b), bytes.iter().position(|&x| x == b));
        }
    }
}
