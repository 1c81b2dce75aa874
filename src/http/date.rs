//! The `Date` header value (IMF-fixdate), formatted once a second, not once a request.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// A cached IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT` (always 29 bytes).
pub struct HttpDate {
    text: [u8; 29],
    second: u64,
}

impl HttpDate {
    pub fn new(now: SystemTime) -> HttpDate {
        let mut date = HttpDate {
            text: [b' '; 29],
            second: u64::MAX,
        };
        date.update(now);
        date
    }

    /// Re-formats the text if `now` is in a later second than the cached one.
    pub fn update(&mut self, now: SystemTime) {
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second == self.second {
            return;
        }
        self.second = second;
        let mut cursor = &mut self.text[..];
        // IMF-fixdate is always exactly 29 bytes for years 1000-9999, so this fits.
        let _ = write!(cursor, "{}", httpdate::HttpDate::from(now));
    }

    pub fn as_bytes(&self) -> &[u8; 29] {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_imf_fixdate() {
        let t = UNIX_EPOCH + Duration::from_secs(784111777);
        assert_eq!(
            HttpDate::new(t).as_bytes(),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn updates_only_on_a_new_second() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut date = HttpDate::new(t);
        let before = *date.as_bytes();
        date.update(t + Duration::from_millis(999));
        assert_eq!(date.as_bytes(), &before);
        date.update(t + Duration::from_secs(1));
        assert_eq!(date.as_bytes(), b"Tue, 14 Nov 2023 22:13:21 GMT");
    }
}
