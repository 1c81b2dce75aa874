//! Walking the frame-pointer chain of the current thread, for profiles taken where the
//! walk happens (the allocator for heap samples, a waiting thread for block samples).
//!
//! Everything built here keeps frame pointers (`.cargo/config.toml`): each frame starts
//! with the caller's frame pointer and the return address (`[fp]`, `[fp + 8]`, on x86-64
//! and aarch64 alike). Code without frame pointers (libc) may leave anything in the
//! register, so every frame pointer is checked before it is read: 16-byte aligned, above
//! the previous one, and inside the current thread's stack, whose bounds are asked of the
//! thread library once per thread. The walk allocates nothing and takes no lock after
//! that first call, so it is safe in an allocator hook.

use std::cell::Cell;
use std::ops::Range;

/// Most return addresses kept per stack (as Go's profiles do).
pub const MAX_DEPTH: usize = 32;

thread_local! {
    /// This thread's stack, `start..end`; empty until first asked.
    static STACK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Writes the return addresses of the current call stack into `out`, innermost first,
/// skipping the first `skip` (the walker's own callers that are not of interest), and
/// returns how many were written.
#[inline(never)]
pub fn walk(skip: usize, out: &mut [u64; MAX_DEPTH]) -> usize {
    let Some(stack) = this_stack() else { return 0 };
    let mut fp = frame_pointer();
    let mut depth = 0;
    let mut skipped = 0;
    while depth < MAX_DEPTH {
        if fp % 16 != 0 || !stack.contains(&fp) || fp + 16 > stack.end {
            break;
        }
        // SAFETY: fp is aligned and fp..fp+16 lies inside this thread's own stack
        // (checked above), which is mapped while the thread runs.
        let (next, return_address) = unsafe {
            let words = fp as *const usize;
            (words.read(), words.add(1).read())
        };
        if return_address == 0 {
            break;
        }
        if skipped < skip {
            skipped += 1;
        } else {
            out[depth] = return_address as u64;
            depth += 1;
        }
        if next <= fp {
            break; // the chain must go up the stack; anything else ends it
        }
        fp = next;
    }
    depth
}

/// The current frame pointer (of `walk`, which is never inlined).
#[inline(always)]
fn frame_pointer() -> usize {
    let fp: usize;
    // SAFETY: reads a register, touches no memory.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    fp
}

/// The current thread's stack bounds, asked of the thread library the first time.
///
/// `pthread_getattr_np` may allocate with libc's malloc (glibc reads /proc/self/maps for
/// the main thread); that is not this process's Rust allocator (mimalloc, not
/// overriding malloc), so calling it from inside the Rust allocator cannot recurse.
fn this_stack() -> Option<Range<usize>> {
    let cached = STACK.try_with(Cell::get).ok()?;
    if cached.1 > cached.0 {
        return Some(cached.0..cached.1);
    }
    let bounds = ask_stack_bounds()?;
    let _ = STACK.try_with(|s| s.set((bounds.start, bounds.end)));
    Some(bounds)
}

fn ask_stack_bounds() -> Option<Range<usize>> {
    // SAFETY: attr is initialised by pthread_getattr_np before it is read, and destroyed
    // once; the out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut base: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut base, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (got == 0 && !base.is_null()).then(|| base as usize..base as usize + size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn outer() -> Vec<u64> {
        std::hint::black_box(inner())
    }

    #[inline(never)]
    fn inner() -> Vec<u64> {
        let mut out = [0; MAX_DEPTH];
        let depth = walk(0, &mut out);
        out[..depth].to_vec()
    }

    #[test]
    fn the_walk_finds_the_callers_in_order() {
        let frames = outer();
        let names: Vec<String> = frames
            .iter()
            .map(|&a| super::super::symbols::resolve(a, true)[0].name.clone())
            .collect();
        let inner = names
            .iter()
            .position(|n| n.ends_with("frames::tests::inner"));
        let outer = names
            .iter()
            .position(|n| n.ends_with("frames::tests::outer"));
        assert!(
            matches!((inner, outer), (Some(i), Some(o)) if i < o),
            "{names:#?}"
        );
    }

    #[test]
    fn the_stack_bounds_hold_a_local() {
        let local = 0u64;
        let bounds = this_stack().expect("stack bounds");
        assert!(bounds.contains(&(std::ptr::addr_of!(local) as usize)));
    }
}
