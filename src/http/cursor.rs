//! Writing forward into a `Vec`'s spare capacity: one capacity check for a whole
//! response head or log line, instead of one per part.
//!
//! Each `extend_from_slice` checks the capacity, calls `memcpy` for a length known only
//! at run time and stores the length back, and a head or a line is a dozen parts. What
//! that saved is counted in ARCHITECTURE.md, "Short scans eight bytes at a time".

use std::mem::MaybeUninit;

/// Writes forward into room reserved at the end of a `Vec`. Every byte below `at` has
/// been written: each method writes all of the bytes it then moves `at` past, so
/// [`Cursor::append`] can hand exactly those to the `Vec`.
///
/// A cursor exists only inside the closure of its `append`, under a lifetime that
/// closure alone knows, so it cannot be swapped for another `Vec`'s cursor, whose bytes
/// the first `Vec` would then take as its own:
///
/// ```compile_fail,E0521
/// use leftpad::http::cursor::Cursor;
/// let (mut a, mut b) = (Vec::new(), Vec::new());
/// Cursor::append(&mut a, 1, |a| Cursor::append(&mut b, 100, |b| std::mem::swap(a, b)));
/// ```
pub struct Cursor<'a> {
    room: &'a mut [MaybeUninit<u8>],
    at: usize,
}

impl Cursor<'_> {
    /// Reserves `most` bytes at the end of `out` and appends what `write` puts there.
    /// Writing past `most` panics (a bounds check) and appends nothing; it never
    /// overruns.
    pub fn append(out: &mut Vec<u8>, most: usize, write: impl FnOnce(&mut Cursor<'_>)) {
        out.reserve(most);
        let len = out.len();
        let mut cursor = Cursor {
            room: &mut out.spare_capacity_mut()[..most],
            at: 0,
        };
        write(&mut cursor);
        let written = cursor.at;
        // SAFETY: `written <= most`, which `reserve` made room for, and the cursor wrote
        // every byte below `written` (its invariant; it is still this `Vec`'s cursor, as
        // the type's documentation shows), so the `Vec`'s first `len + written` bytes
        // are initialized.
        unsafe { out.set_len(len + written) };
    }

    pub fn put(&mut self, bytes: &[u8]) {
        let room = &mut self.room[self.at..self.at + bytes.len()];
        for (slot, &b) in room.iter_mut().zip(bytes) {
            slot.write(b);
        }
        self.at += bytes.len();
    }

    /// A number in decimal. Those under 1000 (every status, most handling times and
    /// body lengths) are written digit by digit, without `itoa`'s buffer and a copy of a
    /// length known only at run time.
    #[inline(always)]
    pub fn number(&mut self, n: u64) {
        let digit = |n: u64| b'0' + (n % 10) as u8;
        match n {
            0..=9 => self.put(&[digit(n)]),
            10..=99 => self.put(&[digit(n / 10), digit(n)]),
            100..=999 => self.put(&[digit(n / 100), digit(n / 10), digit(n)]),
            _ => self.put(itoa::Buffer::new().format(n).as_bytes()),
        }
    }
}

/// The most bytes [`Cursor::number`] writes.
pub const NUMBER_MOST: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_what_was_put_after_what_was_there() {
        let mut out = b"before ".to_vec();
        Cursor::append(&mut out, 16, |out| {
            out.put(b"n=");
            out.number(42);
        });
        assert_eq!(out, b"before n=42");
    }

    #[test]
    fn numbers_on_either_side_of_each_digit_by_digit_width() {
        for n in [0, 9, 10, 99, 100, 999, 1000, 12_345, u64::MAX] {
            let mut out = Vec::new();
            Cursor::append(&mut out, NUMBER_MOST, |out| out.number(n));
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn writing_past_the_room_panics_and_appends_nothing() {
        let mut out = b"kept".to_vec();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Cursor::append(&mut out, 4, |out| out.put(b"12345"));
        }));
        assert!(result.is_err());
        assert_eq!(out, b"kept");
    }
}
