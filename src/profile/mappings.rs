//! The process's code mappings, as Go's `runtime/pprof` and `perf` write them into a
//! profile: every executable mapping of /proc/self/maps with its start, limit and file
//! offset, the file it maps and that file's GNU build ID, the main executable first.
//!
//! pprof ties an address to a binary only through its mapping: `-disasm`, `-list` with
//! a local binary, `-symbolize`, and profilers that ingest pprof (Parca, Pyroscope) key
//! debug information on the file and build ID.
//!
//! **The main executable at its link-time addresses.** This server is a
//! position-independent executable, loaded at a random base. Go 1.19's `go tool pprof`
//! (cmd/pprof, which brings its own object-file reader instead of the binutils one in
//! its vendored pprof) does not relocate at all: its `ObjAddr` returns a profile address
//! unchanged and compares it with the ELF symbol table's addresses, so `-disasm` of a PIE
//! profiled at its run-time addresses never finds a sample ("no matches found"). So the
//! main executable's mapping and locations are written at the addresses the binary
//! states, as if it had been loaded at its link address: the run-time address minus the
//! load bias. The mapping keeps /proc/self/maps' length and file offset, and its start
//! is the maps line's minus the bias, so pprof's own relocation (binutils'
//! `elfexec.GetBase`: `start - offset + segment.Off - segment.Vaddr`) finds a base of zero
//! and agrees, and a file offset (address - start + offset, what Parca computes) is the
//! same either way. `/debug/pprof/symbol` takes these addresses back
//! ([`runtime_address`]). Shared objects, the vDSO and `[vsyscall]` keep their run-time
//! addresses and maps lines, as Go writes them.
//!
//! Build IDs are read from memory, from each loaded object's `PT_NOTE` segments
//! (`dl_iterate_phdr`): no file is opened, and a binary replaced on disk while the
//! process runs (`(deleted)` in /proc/self/maps) still gives the ID of the code that runs.

use std::ops::Range;

/// One mapping of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub limit: u64,
    pub offset: u64,
    pub file: String,
    /// Lower-case hexadecimal, as `readelf -n` and pprof print it; empty if none.
    pub build_id: String,
    /// What to add to an address of this mapping for the run-time address: the main
    /// executable's load bias, zero for the others.
    pub bias: u64,
}

impl Mapping {
    /// Whether the mapping holds the run-time address `address`.
    pub fn holds(&self, address: u64) -> bool {
        let start = self.start.wrapping_add(self.bias);
        let limit = self.limit.wrapping_add(self.bias);
        (start..limit).contains(&address)
    }

    /// The address a profile stores for the run-time address `address`.
    pub fn profile_address(&self, address: u64) -> u64 {
        address.wrapping_sub(self.bias)
    }
}

/// The executable mappings of this process: the main executable's first, then the
/// others (shared objects, the vDSO, `[vsyscall]`) by address.
pub fn process() -> Vec<Mapping> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let objects = loaded_objects();
    let mut main = Vec::new();
    let mut others = Vec::new();
    for line in parse_maps(&maps) {
        let object = objects
            .iter()
            .find(|object| object.loads.iter().any(|r| r.contains(&line.start)));
        let main_object = object.filter(|o| o.is_main);
        let bias = main_object.map_or(0, |o| o.bias);
        let mapping = Mapping {
            start: line.start.wrapping_sub(bias),
            limit: line.end.wrapping_sub(bias),
            offset: line.offset,
            file: line.path,
            build_id: object.map(|o| o.build_id.clone()).unwrap_or_default(),
            bias,
        };
        match main_object {
            Some(_) => main.push(mapping),
            None => others.push(mapping),
        }
    }
    main.extend(others);
    main
}

/// The run-time address of `address` as a profile states it: a main-executable address
/// at its link-time value is relocated by the load bias; any other address is already
/// one. The main executable's link-time range sits far below where a position-independent
/// executable, shared objects and the vDSO are loaded, so the two never meet.
pub fn runtime_address(address: u64) -> u64 {
    static MAIN: std::sync::OnceLock<Vec<Mapping>> = std::sync::OnceLock::new();
    let main = MAIN.get_or_init(|| process().into_iter().take_while(|m| m.bias != 0).collect());
    main.iter()
        .find(|m| (m.start..m.limit).contains(&address))
        .map_or(address, |m| address.wrapping_add(m.bias))
}

/// An executable line of /proc/self/maps.
#[derive(Debug, PartialEq, Eq)]
struct MapsLine {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
}

/// The executable lines of /proc/self/maps (`start-end perms offset dev inode path`),
/// in the kernel's (address) order. Anonymous executable memory (no path) is left out,
/// as Go leaves it out; " (deleted)" is dropped from the path of a replaced file.
fn parse_maps(maps: &str) -> Vec<MapsLine> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            let _device = fields.next()?;
            let _inode = fields.next()?;
            let path = fields.next().unwrap_or("").trim();
            if perms.as_bytes().get(2) != Some(&b'x') || path.is_empty() {
                return None;
            }
            Some(MapsLine {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: path.strip_suffix(" (deleted)").unwrap_or(path).to_owned(),
            })
        })
        .collect()
}

/// A loaded object (`dl_iterate_phdr`): where its loadable segments lie in memory.
struct Object {
    /// The first object listed is the main executable.
    is_main: bool,
    /// Run-time address minus the address the object states (`dlpi_addr`).
    bias: u64,
    /// Its `PT_LOAD` segments, as absolute address ranges (page-aligned at the start, as
    /// the kernel maps them).
    loads: Vec<Range<u64>>,
    build_id: String,
}

fn loaded_objects() -> Vec<Object> {
    let mut found: Vec<Object> = Vec::new();
    // SAFETY: the callback only reads the `dl_phdr_info` it is given, for the duration of
    // the call, and the `Vec` behind `data`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(each_object), (&mut found as *mut Vec<Object>).cast());
    }
    found
}

/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;

unsafe extern "C" fn each_object(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid info for the duration of this call, and
    // `data` is the `Vec` `loaded_objects` passed in.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Vec<Object>>()) };
    let headers = if info.dlpi_phdr.is_null() {
        &[][..]
    } else {
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
    };
    let bias = info.dlpi_addr;
    let page = 4096u64;
    let loads: Vec<Range<u64>> = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_LOAD)
        .map(|h| {
            let start = bias.wrapping_add(h.p_vaddr);
            start & !(page - 1)..start.wrapping_add(h.p_memsz)
        })
        .collect();
    // Notes are read only where a readable loadable segment maps them from the file
    // (its file size, not its memory size): such bytes are mapped for as long as the
    // object is loaded, and this process never unloads objects.
    let readable: Vec<Range<u64>> = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_R != 0)
        .map(|h| h.p_vaddr..h.p_vaddr.saturating_add(h.p_filesz))
        .collect();
    let build_id = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_NOTE)
        .filter(|h| {
            let end = h.p_vaddr.saturating_add(h.p_memsz);
            readable
                .iter()
                .any(|r| r.start <= h.p_vaddr && end <= r.end)
        })
        .find_map(|h| {
            // SAFETY: the note lies inside a readable loadable segment's file-backed
            // bytes (checked just above), mapped at `bias + p_vaddr` while the object
            // stays loaded, which is for the life of the process.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    bias.wrapping_add(h.p_vaddr) as *const u8,
                    usize::try_from(h.p_memsz).ok()?,
                )
            };
            gnu_build_id(bytes, h.p_align)
        })
        .unwrap_or_default();
    found.push(Object {
        is_main: found.is_empty(),
        bias,
        loads,
        build_id,
    });
    0
}

/// The GNU build ID in a note segment's bytes, as lower-case hex. Each note is a
/// header (name size, descriptor size, type: 32-bit words), the name and the
/// descriptor, each padded to the segment's alignment (4, or 8 in some objects).
fn gnu_build_id(notes: &[u8], align: u64) -> Option<String> {
    let align = if align == 8 { 8 } else { 4 };
    let padded = |n: usize| n.checked_add(align - 1).map(|n| n & !(align - 1));
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(notes.get(at..at + 4)?.try_into().ok()?))
    };
    let mut at = 0;
    while at + 12 <= notes.len() {
        let name_size = word(at)? as usize;
        let desc_size = word(at + 4)? as usize;
        let kind = word(at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(padded(name_size)?)?;
        let end = desc_at.checked_add(padded(desc_size)?)?;
        let name = notes.get(name_at..name_at.checked_add(name_size)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(desc_size)?)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" && !desc.is_empty() {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        at = end;
    }
    None
}

/// The running kernel's build ID, from /sys/kernel/notes (as `perf` reads it); empty if
/// it cannot be read.
pub fn kernel_build_id() -> String {
    std::fs::read("/sys/kernel/notes")
        .ok()
        .and_then(|notes| gnu_build_id(&notes, 4))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_lines_of_proc_maps() {
        let maps = "\
55d0c0000000-55d0c01fb000 r--p 00000000 fe:00 42 /srv/leftpad
55d0c01fb000-55d0c0676000 r-xp 001fa000 fe:00 42 /srv/leftpad (deleted)
7f00000000-7f00001000 rw-p 00000000 00:00 0
7f3843de0000-7f3843de2000 r-xp 00000000 00:00 0                          [vdso]
7f3843e00000-7f3843e01000 r-xp 00000000 00:00 0
7ff49baea000-7ff49bc40000 r-xp 00026000 fe:00 326279                     /usr/lib/libc.so.6
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]";
        let lines = parse_maps(maps);
        let paths: Vec<&str> = lines.iter().map(|l| l.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/srv/leftpad", "[vdso]", "/usr/lib/libc.so.6", "[vsyscall]"]
        );
        assert_eq!(
            lines[0],
            MapsLine {
                start: 0x55d0c01fb000,
                end: 0x55d0c0676000,
                offset: 0x1fa000,
                path: "/srv/leftpad".into(),
            }
        );
    }

    #[test]
    fn build_id_notes_parse() {
        let mut notes = Vec::new();
        let mut note = |name: &[u8], kind: u32, desc: &[u8]| {
            notes.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
            notes.extend_from_slice(&kind.to_ne_bytes());
            for part in [name, desc] {
                notes.extend_from_slice(part);
                notes.resize(notes.len().next_multiple_of(4), 0);
            }
        };
        note(b"GNU\0", 1, &[3, 2, 0, 0]); // NT_GNU_ABI_TAG first
        note(b"Linux\0", 3, &[9; 4]); // a type 3 that is not GNU's
        note(b"GNU\0", 3, &[0x70, 0xb1, 0xfc, 0xf1, 0x0a]);
        assert_eq!(gnu_build_id(&notes, 4).as_deref(), Some("70b1fcf10a"));
        assert_eq!(gnu_build_id(&notes[..notes.len() - 4], 4), None, "cut");
        assert_eq!(gnu_build_id(&[], 4), None);
    }

    #[test]
    fn this_process_maps_its_executable_first_with_its_build_id() {
        let mappings = process();
        let main = mappings.first().expect("mappings");
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let exe = exe.to_string_lossy();
        assert_eq!(main.file, exe.strip_suffix(" (deleted)").unwrap_or(&exe));
        assert!(main.build_id.len() >= 16, "{main:?}");
        let code = this_process_maps_its_executable_first_with_its_build_id as *const () as u64;
        assert!(main.holds(code), "{main:x?} holds {code:#x}");
        // At the binary's own addresses: the runtime address comes back from them.
        let stated = main.profile_address(code);
        assert!((main.start..main.limit).contains(&stated));
        assert_eq!(runtime_address(stated), code);
        assert_eq!(runtime_address(code), code, "a run-time address stays");
        // qemu-user maps no vDSO into the process.
        if !cfg!(leftpad_emulated) {
            assert!(mappings.iter().any(|m| m.file == "[vdso]"));
        }
        #[cfg(target_env = "gnu")]
        {
            let libc_code = libc::getpid as *const () as u64;
            let libc = mappings.iter().find(|m| m.holds(libc_code));
            assert!(
                libc.is_some_and(|m| m.file.contains("libc") && !m.build_id.is_empty()),
                "{mappings:#x?}"
            );
        }
    }
}
