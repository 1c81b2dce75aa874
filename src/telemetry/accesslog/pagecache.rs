//! Keeping the access log out of the page cache: a log file is written once and read
//! back rarely, so its pages are let go once they are on their way to the disk.
//!
//! Without this, the page cache grows by the log's rate (210 MB/s at 16 pipelined
//! requests per read) until memory is full, and every new page costs its allocation
//! and, on a VM, the first touch of guest memory (20 µs a page on the development VM).
//! Measured there at 16 pipelined: log and StatsD cost +73% CPU per request over
//! everything off, +13% with the pages let go, which reuses the same few MiB
//! (bench-results/runs/2026-12-02-85ee7ef-pagecache). The price is the write-back's
//! submission, now made from the writer's thread instead of the kernel's flusher
//! threads: 3.7 µs of the writer's CPU per 64 KiB (`examples/log_write_floor.rs` with
//! and without `--keep-cache`).

use std::fs::File;
use std::os::fd::AsRawFd;

/// Bytes a writer appends between two rounds of advice: a few system calls per MiB.
const STEP: u64 = 1 << 20;

/// One writer's progress through its file, for [`Trim::after_write`].
#[derive(Debug, Default)]
pub struct Trim {
    /// Bytes this writer appended since its last round.
    since: u64,
    /// The end of the file when the last round started its write-back: pages before it
    /// are clean by the next round, or soon after.
    started_to: u64,
}

impl Trim {
    /// Called after each append of `bytes` to `file` (a regular file opened for
    /// appending). Every [`STEP`] bytes: starts write-back of everything written so far
    /// and drops from the cache the pages whose write-back the round before started
    /// (pages still dirty or under write-back are skipped by the kernel, and dropped by a
    /// later round). The file's end comes from its offset, which `O_APPEND` leaves at
    /// the end; other workers' appends to the same file are covered as well.
    pub fn after_write(&mut self, file: &File, bytes: usize) {
        self.since += bytes as u64;
        if self.since < STEP {
            return;
        }
        self.since = 0;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is the open descriptor `file` owns for the duration of the call;
        // lseek takes no memory from us.
        let end = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        let Ok(end) = u64::try_from(end) else {
            return; // not seekable: nothing cached to let go
        };
        // Advice only: a failure (a file system without it) changes nothing else.
        // SAFETY: as above; sync_file_range and posix_fadvise take offsets, not memory.
        unsafe {
            libc::sync_file_range(fd, 0, end as i64, libc::SYNC_FILE_RANGE_WRITE);
            if self.started_to > 0 {
                libc::posix_fadvise(fd, 0, self.started_to as i64, libc::POSIX_FADV_DONTNEED);
            }
        }
        self.started_to = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Pages of `file` (open for reading) in the page cache, from mincore over a mapping.
    fn cached_pages(file: &File, len: usize) -> usize {
        let page = 4096;
        let pages = len.div_ceil(page);
        // SAFETY: a fresh read-only shared mapping of `len` bytes of the open file; it is
        // only passed to mincore (never read through) and unmapped before returning.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut resident = vec![0u8; pages];
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
            libc::munmap(map, len);
            resident.iter().filter(|&&r| r & 1 == 1).count()
        }
    }

    /// A log written in 64 KiB appends keeps only its last step cached once written
    /// back, not all of it, and every byte of it is still there.
    /// Written under target/, on the disk the project lives on (a tmpfs file could not
    /// be let go, being only memory).
    #[test]
    fn the_written_log_leaves_the_page_cache() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        let path = dir.join(format!("pagecache-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut trim = Trim::default();
        let total = 64 << 20;
        for _ in 0..total / chunk.len() {
            file.write_all(&chunk).unwrap();
            trim.after_write(&file, chunk.len());
        }
        // Waits for the write-back the rounds started (the test must not depend on the
        // disk's speed); then one more round lets go of all but the last step.
        // SAFETY: fdatasync on an open descriptor.
        unsafe { libc::fdatasync(file.as_raw_fd()) };
        trim.after_write(&file, STEP as usize);
        let cached = cached_pages(&File::open(&path).unwrap(), total) * 4096;
        let back = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(back.len() == total && back.iter().all(|&b| b == b'x'));
        assert!(
            cached <= 2 * STEP as usize,
            "{} MiB of a {} MiB log still cached",
            cached >> 20,
            total >> 20
        );
    }
}
