//! A worker's pool of connection buffers, so that an idle connection owns none.
//!
//! A keep-alive connection between requests waits for readability without a buffer (as
//! nginx does); it takes an input and an output buffer from its worker's pool when bytes
//! arrive and gives them back once the answer is written. Memory then follows the
//! connections being served at one moment, not the connections open (ARCHITECTURE.md, "Idle connections: no buffer, then no task").
//!
//! A buffer that grew (a large head, a pipelined batch of long answers) comes back
//! grown and is reused as it is, so a busy connection does not grow a fresh buffer on
//! every batch. The free buffers are bounded in bytes: beyond that, and beyond
//! [`MAX_POOLED`] for one buffer, given-back buffers go back to the allocator.
//!
//! One thread owns each pool (the worker's), so it is a plain `Vec` behind a `RefCell`.

use std::cell::{Cell, RefCell};

/// The largest buffer kept for reuse: an output that passed the core's high-water mark
/// by one answer fits.
pub(super) const MAX_POOLED: usize = 256 * 1024;

pub(super) struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    free_bytes: Cell<usize>,
    /// The capacity of a new buffer (and the least a pooled one has).
    size: usize,
    keep_bytes: usize,
}

impl BufferPool {
    /// A pool of buffers of at least `size` bytes that keeps at most `keep_bytes` of them
    /// free. Room for the most buffers that can be kept is reserved now, so giving one
    /// back never allocates.
    pub(super) fn new(size: usize, keep_bytes: usize) -> BufferPool {
        BufferPool {
            free: RefCell::new(Vec::with_capacity(keep_bytes / size)),
            free_bytes: Cell::new(0),
            size,
            keep_bytes,
        }
    }

    /// An empty buffer of at least the pool's size: a free one, or a new one.
    pub(super) fn take(&self) -> Vec<u8> {
        match self.free.borrow_mut().pop() {
            Some(buf) => {
                self.free_bytes.set(self.free_bytes.get() - buf.capacity());
                buf
            }
            None => Vec::with_capacity(self.size),
        }
    }

    /// Gives `buf` back. One that did not come from a pool (smaller than its size, such
    /// as an empty `Vec`), one over [`MAX_POOLED`], and any past the bound are freed.
    pub(super) fn give(&self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        let mut free = self.free.borrow_mut();
        let fits = self.free_bytes.get() + capacity <= self.keep_bytes;
        if (self.size..=MAX_POOLED).contains(&capacity) && fits && free.len() < free.capacity() {
            buf.clear();
            free.push(buf);
            self.free_bytes.set(self.free_bytes.get() + capacity);
        }
    }

    /// Free buffers held now, and their bytes.
    #[cfg(test)]
    pub(super) fn free(&self) -> (usize, usize) {
        (self.free.borrow().len(), self.free_bytes.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_come_back_empty() {
        let pool = BufferPool::new(64, 256);
        let mut buf = pool.take();
        assert!(buf.capacity() >= 64);
        buf.extend_from_slice(b"request bytes");
        let address = buf.as_ptr();
        pool.give(buf);
        assert_eq!(pool.free(), (1, 64));
        let again = pool.take();
        assert_eq!((again.as_ptr(), again.len()), (address, 0));
        assert_eq!(pool.free(), (0, 0));
    }

    #[test]
    fn grown_buffers_are_kept_grown_within_the_byte_bound() {
        let pool = BufferPool::new(64, 1024);
        let mut grown = pool.take();
        grown.reserve(500);
        let capacity = grown.capacity();
        pool.give(grown);
        assert_eq!(pool.take().capacity(), capacity, "reused as it grew");
        // Five of 64 bytes do not fit beside a 1000-byte one in 1024 bytes.
        let mut big = Vec::with_capacity(1000);
        big.push(1u8);
        pool.give(big);
        let small: Vec<_> = (0..5).map(|_| Vec::<u8>::with_capacity(64)).collect();
        for buf in small {
            pool.give(buf);
        }
        assert_eq!(pool.free().0, 1);
        assert!(pool.free().1 <= 1024);
    }

    #[test]
    fn foreign_and_oversized_buffers_are_freed() {
        let pool = BufferPool::new(64, 4 * MAX_POOLED);
        pool.give(Vec::new());
        pool.give(Vec::with_capacity(MAX_POOLED + 1));
        assert_eq!(pool.free(), (0, 0));
    }
}
