//! Stack unwinding that is exact through code with and without frame pointers.
//!
//! Our code keeps frame pointers, but libc, libgcc, ld.so and the vDSO do not: a walk of
//! the frame-pointer chain from inside them skips or invents callers. Their DWARF
//! call-frame information (`.eh_frame`, indexed by `.eh_frame_hdr`) says exactly how to
//! find each caller, so the [`framehop`] crate unwinds with it, and with frame pointers
//! where a module has no CFI.
//!
//! Everything is prepared before sampling starts, on the thread asking for a profile:
//! the list of loaded modules (from `dl_iterate_phdr`, with their unwind sections read
//! in place from mapped memory, the vDSO included), the unwind caches, and a table of the
//! process's writable mappings. [`StackUnwinder::unwind`] itself then allocates nothing
//! (framehop's `MustNotAllocateDuringUnwind` keeps its DWARF evaluation on the stack),
//! takes no lock (a cache is claimed with an atomic flag), and reads memory only through
//! the caller's `read_stack`, which validates every address: it may run in a signal
//! handler.

use std::cell::UnsafeCell;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicBool, Ordering};

use framehop::{
    CacheNative, FrameAddress, Module, ModuleSectionInfo, MustNotAllocateDuringUnwind,
    UnwindRegsNative, Unwinder, UnwinderNative,
};

/// Most frames kept per stack; deeper stacks are cut at the outermost end.
pub const MAX_FRAMES: usize = 128;
/// Unwind caches: one per signal handler running at once (at most one per CPU, since
/// the profiling signal is blocked while its handler runs), with room to spare.
const CACHES: usize = 64;

/// Bytes of a loaded module, read in place.
///
/// SAFETY of treating them as `'static`: they are a loaded object's own mapped segments
/// (`dl_iterate_phdr` gives their addresses), and this process never unloads objects (no
/// `dlclose` anywhere in it or its dependencies), so they stay mapped and unchanged
/// (read-only segments) for the life of the process.
#[derive(Clone, Copy)]
pub struct Mapped(&'static [u8]);

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0
    }
}

/// Registers an unwind starts from: program counter, stack pointer, frame pointer, and on
/// aarch64 the link register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
    pub lr: u64,
}

impl Regs {
    fn unwind_regs(self) -> UnwindRegsNative {
        #[cfg(target_arch = "x86_64")]
        return UnwindRegsNative::new(self.pc, self.sp, self.fp);
        #[cfg(target_arch = "aarch64")]
        return UnwindRegsNative::new(self.lr, self.sp, self.fp);
    }
}

struct CacheSlot {
    busy: AtomicBool,
    cache: UnsafeCell<CacheNative<MustNotAllocateDuringUnwind>>,
}

/// An unwinder for this process's loaded modules; see the module documentation.
pub struct StackUnwinder {
    unwinder: UnwinderNative<Mapped, MustNotAllocateDuringUnwind>,
    caches: Box<[CacheSlot]>,
    modules: usize,
}

// SAFETY: the unwinder is only read after construction; each cache is used by one thread
// at a time, claimed through its `busy` flag (acquire) and released (release) after use.
unsafe impl Sync for StackUnwinder {}
unsafe impl Send for StackUnwinder {}

impl StackUnwinder {
    /// Reads the unwind information of every loaded module. Allocates: call it before
    /// sampling starts.
    pub fn new() -> StackUnwinder {
        let mut unwinder = UnwinderNative::new();
        let mut modules = 0;
        for module in loaded_modules() {
            unwinder.add_module(module);
            modules += 1;
        }
        let caches = (0..CACHES)
            .map(|_| CacheSlot {
                busy: AtomicBool::new(false),
                cache: UnsafeCell::new(CacheNative::new_in()),
            })
            .collect();
        StackUnwinder {
            unwinder,
            caches,
            modules,
        }
    }

    /// How many modules have unwind information.
    pub fn modules(&self) -> usize {
        self.modules
    }

    /// Unwinds from `regs` into `out` (innermost first: the exact PC, then return
    /// addresses) and returns how many frames were written; at least one (the PC) when
    /// `out` is not empty. Every memory read goes through `read_stack`, which must return
    /// `Err` for any address it cannot read safely. No allocation, no lock.
    pub fn unwind(
        &self,
        regs: Regs,
        read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
        out: &mut [u64],
    ) -> usize {
        if out.is_empty() {
            return 0;
        }
        out[0] = regs.pc;
        let Some(slot) = self.claim_cache() else {
            return 1; // every cache in use: keep the leaf, which still counts the time
        };
        // SAFETY: `claim_cache` set `busy` for this slot; no other thread touches the
        // cache until it is released below.
        let cache = unsafe { &mut *slot.cache.get() };
        let mut depth = 1;
        let mut unwind_regs = regs.unwind_regs();
        let mut address = FrameAddress::from_instruction_pointer(regs.pc);
        while depth < out.len() {
            match self
                .unwinder
                .unwind_frame(address, &mut unwind_regs, cache, read_stack)
            {
                Ok(Some(return_address)) => {
                    let Some(next) = FrameAddress::from_return_address(return_address) else {
                        break;
                    };
                    out[depth] = return_address;
                    depth += 1;
                    address = next;
                }
                Ok(None) | Err(_) => break,
            }
        }
        slot.busy.store(false, Ordering::Release);
        depth
    }

    fn claim_cache(&self) -> Option<&CacheSlot> {
        self.caches.iter().find(|slot| {
            slot.busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })
    }
}

impl Default for StackUnwinder {
    fn default() -> Self {
        StackUnwinder::new()
    }
}

/// A loaded object's unwind sections, found through its program headers.
struct InMemorySections {
    text: Range<u64>,
    eh_frame_hdr: Option<(Range<u64>, Mapped)>,
    eh_frame: Option<(Range<u64>, Mapped)>,
}

impl ModuleSectionInfo<Mapped> for InMemorySections {
    fn base_svma(&self) -> u64 {
        0 // ELF: addresses are stated relative to a base of zero
    }

    fn section_svma_range(&mut self, name: &[u8]) -> Option<Range<u64>> {
        match name {
            b".text" => Some(self.text.clone()),
            b".eh_frame_hdr" => self.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
            b".eh_frame" => self.eh_frame.as_ref().map(|(r, _)| r.clone()),
            _ => None,
        }
    }

    fn section_data(&mut self, name: &[u8]) -> Option<Mapped> {
        match name {
            b".eh_frame_hdr" => self.eh_frame_hdr.as_ref().map(|(_, d)| *d),
            b".eh_frame" => self.eh_frame.as_ref().map(|(_, d)| *d),
            _ => None,
        }
    }
}

/// A program header as the unwinder needs it (`svma` = address stated in the object).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    kind: u32,
    svma: u64,
    size: u64,
    executable: bool,
}

fn loaded_modules() -> Vec<Module<Mapped>> {
    let mut found: Vec<(String, u64, Vec<Segment>)> = Vec::new();
    // SAFETY: the callback only reads the `dl_phdr_info` it is given, for the duration of
    // the call, and the `Vec` behind `data`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), (&mut found as *mut Vec<_>).cast());
    }
    found
        .into_iter()
        .filter_map(|(name, bias, segments)| module(name, bias, &segments))
        .collect()
}

unsafe extern "C" fn each_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid info for the duration of this call, and
    // `data` is the `Vec` `loaded_modules` passed in.
    let (info, found) = unsafe {
        (
            &*info,
            &mut *data.cast::<Vec<(String, u64, Vec<Segment>)>>(),
        )
    };
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the loader.
        unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    let headers = if info.dlpi_phdr.is_null() {
        &[][..]
    } else {
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
    };
    let segments = headers
        .iter()
        .map(|h| Segment {
            kind: h.p_type,
            svma: h.p_vaddr,
            size: h.p_memsz,
            executable: h.p_flags & libc::PF_X != 0,
        })
        .collect();
    found.push((name, info.dlpi_addr, segments));
    0
}

/// The framehop module of one loaded object: its address range, and its unwind sections
/// read in place. `None` for an object with nothing loaded.
fn module(name: String, bias: u64, segments: &[Segment]) -> Option<Module<Mapped>> {
    let loads: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.kind == libc::PT_LOAD)
        .collect();
    let start = loads.iter().map(|s| s.svma).min()?;
    let end = loads.iter().map(|s| s.svma + s.size).max()?;
    let text = loads
        .iter()
        .find(|s| s.executable)
        .map_or(start..end, |s| s.svma..s.svma + s.size);
    let mapped = |range: Range<u64>| {
        // SAFETY: `range` lies inside one of the object's loaded segments (checked by the
        // callers below), which stay mapped for the life of the process (see `Mapped`).
        Mapped(unsafe {
            std::slice::from_raw_parts(
                (bias + range.start) as *const u8,
                (range.end - range.start) as usize,
            )
        })
    };
    let containing = |svma: u64| {
        loads
            .iter()
            .find(|s| (s.svma..s.svma + s.size).contains(&svma))
            .map(|s| s.svma + s.size)
    };
    let hdr = segments.iter().find(|s| s.kind == libc::PT_GNU_EH_FRAME);
    let (eh_frame_hdr, eh_frame) = match hdr {
        Some(hdr) if containing(hdr.svma).is_some_and(|end| hdr.svma + hdr.size <= end) => {
            let hdr_range = hdr.svma..hdr.svma + hdr.size;
            let hdr_bytes = mapped(hdr_range.clone());
            let eh_frame = eh_frame_address(&hdr_bytes, bias + hdr.svma)
                .map(|avma| avma.wrapping_sub(bias))
                .and_then(|svma| Some(svma..containing(svma)?))
                .map(|range| (range.clone(), mapped(range)));
            (Some((hdr_range, hdr_bytes)), eh_frame)
        }
        _ => (None, None),
    };
    let sections = InMemorySections {
        text,
        eh_frame_hdr,
        eh_frame,
    };
    Some(Module::new(name, bias + start..bias + end, bias, sections))
}

/// The address of `.eh_frame`, from the `eh_frame_ptr` field of an `.eh_frame_hdr` that
/// is mapped at `hdr_avma`. Handles the encodings linkers write (pc-relative or absolute,
/// 4 or 8 bytes).
fn eh_frame_address(hdr: &[u8], hdr_avma: u64) -> Option<u64> {
    let (&version, rest) = hdr.split_first()?;
    let &encoding = rest.first()?;
    if version != 1 {
        return None;
    }
    let field = hdr.get(4..)?;
    let value = match encoding & 0x0f {
        0x03 => u64::from(u32::from_le_bytes(field.get(..4)?.try_into().ok()?)),
        0x0b => i64::from(i32::from_le_bytes(field.get(..4)?.try_into().ok()?)) as u64,
        0x00 | 0x04 | 0x0c => u64::from_le_bytes(field.get(..8)?.try_into().ok()?),
        _ => return None,
    };
    match encoding & 0x70 {
        0x00 => Some(value),
        0x10 => Some((hdr_avma + 4).wrapping_add(value)),
        _ => None,
    }
}

/// The process's writable mappings (stacks among them), sorted, from /proc/self/maps:
/// what a stack read may touch. Read before sampling starts.
pub fn writable_mappings() -> Vec<Range<u64>> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut ranges = parse_writable_mappings(&maps);
    ranges.sort_by_key(|r| r.start);
    ranges
}

fn parse_writable_mappings(maps: &str) -> Vec<Range<u64>> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            if !perms.starts_with("rw") {
                return None;
            }
            Some(u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?)
        })
        .collect()
}

/// The mapping of `sorted` that contains `address`, if any. No allocation.
pub fn mapping_of(sorted: &[Range<u64>], address: u64) -> Option<Range<u64>> {
    let index = sorted.partition_point(|r| r.start <= address);
    let candidate = sorted.get(index.checked_sub(1)?)?;
    candidate.contains(&address).then(|| candidate.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_mappings_parse_and_search() {
        let maps = "\
5555-6000 r-xp 00000000 fd:00 1 /bin/x
6000-7000 rw-p 00000000 00:00 0
7ffd0000-7ffe0000 rw-p 00000000 00:00 0 [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]";
        let ranges = parse_writable_mappings(maps);
        assert_eq!(ranges, [0x6000..0x7000, 0x7ffd0000..0x7ffe0000]);
        assert_eq!(mapping_of(&ranges, 0x6800), Some(0x6000..0x7000));
        assert_eq!(
            mapping_of(&ranges, 0x7ffdffff),
            Some(0x7ffd0000..0x7ffe0000)
        );
        assert_eq!(mapping_of(&ranges, 0x7000), None);
        assert_eq!(mapping_of(&ranges, 0x5fff), None);
        assert_eq!(mapping_of(&[], 1), None);
    }

    #[test]
    fn eh_frame_pointer_encodings() {
        // pc-relative sdata4: the field sits at hdr + 4.
        let hdr = [1, 0x1b, 0x03, 0x3b, 0x10, 0, 0, 0];
        assert_eq!(eh_frame_address(&hdr, 0x1000), Some(0x1000 + 4 + 0x10));
        let back = [1, 0x1b, 0x03, 0x3b, 0xf0, 0xff, 0xff, 0xff];
        assert_eq!(eh_frame_address(&back, 0x1000), Some(0x1000 + 4 - 0x10));
        let absolute = [1, 0x03, 0x03, 0x3b, 0x78, 0x56, 0x34, 0x12];
        assert_eq!(eh_frame_address(&absolute, 0), Some(0x1234_5678));
        assert_eq!(eh_frame_address(&[2, 0x1b, 0, 0, 0, 0, 0, 0], 0), None);
        assert_eq!(eh_frame_address(&[1, 0x1b], 0), None);
    }

    /// Unwinds this very thread from inside nested functions and finds them in order,
    /// with libc's frames in between handled by CFI (`qsort` calls back into our code).
    #[test]
    fn unwinds_the_current_thread_through_libc() {
        let unwinder = StackUnwinder::new();
        assert!(unwinder.modules() >= 2, "the executable and libc at least");
        let frames = through_qsort(&unwinder);
        let names: Vec<String> = frames
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let inlined = super::super::symbols::resolve(a, i > 0);
                inlined
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" < ")
            })
            .collect();
        let position = |needle: &str| names.iter().position(|n| n.contains(needle));
        let comparator = position("compare_and_unwind").expect("the comparator");
        let qsort = position("qsort").expect("libc's qsort under the comparator");
        let caller = position("through_qsort").expect("our caller of qsort");
        let test = position("unwinds_the_current_thread_through_libc").expect("the test");
        assert!(
            comparator < qsort && qsort < caller && caller < test,
            "{names:#?}"
        );
    }

    static mut UNWOUND: Vec<u64> = Vec::new();
    static mut UNWINDER: Option<&'static StackUnwinder> = None;

    #[inline(never)]
    fn through_qsort(unwinder: &StackUnwinder) -> Vec<u64> {
        let mut items = [3u64, 1, 2];
        // SAFETY (test): single-threaded use of the statics around one qsort call; the
        // reference does not outlive this function (reset below).
        unsafe {
            UNWINDER =
                Some(std::mem::transmute::<&StackUnwinder, &'static StackUnwinder>(unwinder));
            libc::qsort(
                items.as_mut_ptr().cast(),
                items.len(),
                8,
                Some(compare_and_unwind),
            );
            UNWINDER = None;
            std::mem::take(&mut *std::ptr::addr_of_mut!(UNWOUND))
        }
    }

    extern "C" fn compare_and_unwind(
        a: *const libc::c_void,
        b: *const libc::c_void,
    ) -> libc::c_int {
        // SAFETY (test): qsort passes pointers to the u64 items; the statics are set by
        // `through_qsort` on this thread.
        unsafe {
            let unwound = &mut *std::ptr::addr_of_mut!(UNWOUND);
            if let (true, Some(unwinder)) = (unwound.is_empty(), UNWINDER) {
                let regs = current_regs();
                let stack = writable_mappings();
                let bounds = mapping_of(&stack, regs.sp).expect("the stack is mapped");
                let mut read = |address: u64| {
                    if address % 8 == 0 && bounds.start <= address && address + 8 <= bounds.end {
                        Ok(*(address as *const u64))
                    } else {
                        Err(())
                    }
                };
                let mut out = [0u64; MAX_FRAMES];
                let depth = unwinder.unwind(regs, &mut read, &mut out);
                unwound.extend_from_slice(&out[..depth]);
            }
            (*a.cast::<u64>()).cmp(&*b.cast::<u64>()) as libc::c_int
        }
    }

    #[inline(always)]
    fn current_regs() -> Regs {
        let (pc, sp, fp, lr): (u64, u64, u64, u64);
        // SAFETY: reads registers only.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("lea {pc}, [rip]", "mov {sp}, rsp", "mov {fp}, rbp",
                pc = out(reg) pc, sp = out(reg) sp, fp = out(reg) fp);
            lr = 0;
        }
        // SAFETY: reads registers only.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!("adr {pc}, .", "mov {sp}, sp", "mov {fp}, x29", "mov {lr}, x30",
                pc = out(reg) pc, sp = out(reg) sp, fp = out(reg) fp, lr = out(reg) lr);
        }
        Regs { pc, sp, fp, lr }
    }
}
