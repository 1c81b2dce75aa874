//! Names for the procedure linkage table's stubs: `memcpy@plt`, as `objdump` and `perf`
//! name them.
//!
//! A call from this binary to a shared library's function (`memcpy`, `write`) goes
//! through a 16-byte stub in `.plt` that jumps through the function's GOT slot. The
//! stubs have no symbols, so a sample that lands in one (a hot `memcpy` does) would be a
//! bare address. Like binutils' synthetic `@plt` symbols, each stub is decoded: its
//! `jmp *slot(%rip)` names a GOT slot, and the dynamic relocation that fills that slot
//! names the function. Where the instruction cannot be decoded (aarch64's stubs are
//! `adrp`/`ldr`/`br` sequences), the stubs of a lazy `.plt` are in the order of
//! `.rela.plt`, after a header (16 bytes on x86-64, 32 on aarch64).
//!
//! Everything is read from the files with positioned reads of their section headers and
//! of the few sections needed (never the whole file), once, after sampling; nothing here
//! touches the process's memory.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use super::mappings;

/// The stubs of one object: their run-time addresses and names.
struct Stubs {
    ranges: Vec<(Range<u64>, String)>,
}

/// The name of the PLT stub at run-time `address`, if it is one.
pub fn name(address: u64) -> Option<String> {
    static STUBS: OnceLock<Vec<Stubs>> = OnceLock::new();
    let stubs = STUBS.get_or_init(load);
    stubs.iter().find_map(|object| {
        object
            .ranges
            .iter()
            .find(|(range, _)| range.contains(&address))
            .map(|(_, name)| name.clone())
    })
}

/// The stubs of every object mapped from a file, at run-time addresses.
fn load() -> Vec<Stubs> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (index, mapping) in mappings::process().into_iter().enumerate() {
        if mapping.file.starts_with('[') || seen.contains(&mapping.file) {
            continue;
        }
        seen.push(mapping.file.clone());
        // The main executable by its kernel link, which holds even if the file was
        // replaced on disk since; the others by path.
        let path = if index == 0 {
            "/proc/self/exe".to_owned()
        } else {
            mapping.file.clone()
        };
        // Run-time address = stated address + load bias: from the maps line (its start
        // and file offset) and where the file's executable segment says it sits.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let Some(elf) = Elf::read(&file) else {
            continue;
        };
        let Some(bias) = elf.bias(&mapping) else {
            continue;
        };
        let ranges = elf
            .stubs()
            .into_iter()
            .map(|(range, name)| {
                (
                    range.start.wrapping_add(bias)..range.end.wrapping_add(bias),
                    format!("{name}@plt"),
                )
            })
            .collect();
        out.push(Stubs { ranges });
    }
    out
}

/// Section header fields this needs.
#[derive(Clone, Debug, Default)]
struct Section {
    name: String,
    kind: u32,
    address: u64,
    offset: u64,
    size: u64,
    link: u32,
}

/// Program header fields this needs.
struct Segment {
    kind: u32,
    executable: bool,
    offset: u64,
    address: u64,
    file_size: u64,
}

/// What is read of an ELF file: its headers, and sections on demand.
struct Elf<'f> {
    file: &'f File,
    machine: u16,
    sections: Vec<Section>,
    segments: Vec<Segment>,
}

/// Sections larger than this are not read (no real `.rela.plt` or `.dynsym` is).
const MAX_SECTION: u64 = 64 << 20;
const SHT_RELA: u32 = 4;
const PT_LOAD: u32 = 1;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

impl<'f> Elf<'f> {
    /// The headers of a 64-bit little-endian ELF file; `None` for anything else.
    fn read(file: &'f File) -> Option<Elf<'f>> {
        let mut header = [0u8; 64];
        file.read_exact_at(&mut header, 0).ok()?;
        // Magic, 64-bit, little-endian.
        if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
            return None;
        }
        let machine = u16_at(&header, 0x12)?;
        let (phoff, shoff) = (u64_at(&header, 0x20)?, u64_at(&header, 0x28)?);
        let (phentsize, phnum) = (u16_at(&header, 0x36)?, u16_at(&header, 0x38)?);
        let (shentsize, shnum) = (u16_at(&header, 0x3a)?, u16_at(&header, 0x3c)?);
        let shstrndx = usize::from(u16_at(&header, 0x3e)?);
        if phentsize < 56 || shentsize < 64 {
            return None;
        }
        let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
        file.read_exact_at(&mut table, phoff).ok()?;
        let segments = table
            .chunks_exact(usize::from(phentsize))
            .filter_map(|h| {
                Some(Segment {
                    kind: u32_at(h, 0)?,
                    executable: u32_at(h, 4)? & 1 != 0,
                    offset: u64_at(h, 8)?,
                    address: u64_at(h, 0x10)?,
                    file_size: u64_at(h, 0x20)?,
                })
            })
            .collect();
        let mut table = vec![0u8; usize::from(shentsize) * usize::from(shnum)];
        file.read_exact_at(&mut table, shoff).ok()?;
        let mut sections: Vec<(u32, Section)> = table
            .chunks_exact(usize::from(shentsize))
            .filter_map(|h| {
                Some((
                    u32_at(h, 0)?,
                    Section {
                        name: String::new(),
                        kind: u32_at(h, 4)?,
                        address: u64_at(h, 0x10)?,
                        offset: u64_at(h, 0x18)?,
                        size: u64_at(h, 0x20)?,
                        link: u32_at(h, 0x28)?,
                    },
                ))
            })
            .collect();
        let mut elf = Elf {
            file,
            machine,
            sections: Vec::new(),
            segments,
        };
        let names = elf.contents(&sections.get(shstrndx)?.1)?;
        for (name, section) in &mut sections {
            section.name = c_string(&names, *name as usize).unwrap_or_default();
        }
        elf.sections = sections.into_iter().map(|(_, s)| s).collect();
        Some(elf)
    }

    fn contents(&self, section: &Section) -> Option<Vec<u8>> {
        if section.size > MAX_SECTION {
            return None;
        }
        let mut bytes = vec![0u8; usize::try_from(section.size).ok()?];
        self.file.read_exact_at(&mut bytes, section.offset).ok()?;
        Some(bytes)
    }

    fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The load bias of the object `mapping` (a maps line) maps: the executable segment
    /// holding the line's file offset sits at `mapping.start` (run time) for that offset.
    fn bias(&self, mapping: &mappings::Mapping) -> Option<u64> {
        let run_start = mapping.start.wrapping_add(mapping.bias);
        let segment = self.segments.iter().find(|s| {
            s.kind == PT_LOAD
                && s.executable
                && (s.offset & !0xfff..s.offset.saturating_add(s.file_size))
                    .contains(&mapping.offset)
        })?;
        // The stated address of file offset `mapping.offset` in that segment.
        let stated = segment
            .address
            .wrapping_add(mapping.offset)
            .wrapping_sub(segment.offset);
        Some(run_start.wrapping_sub(stated))
    }

    /// Every stub with the name of the function it jumps to, at stated addresses.
    fn stubs(&self) -> Vec<(Range<u64>, String)> {
        let slots = self.slot_names();
        let mut out = Vec::new();
        for (name, header) in [(".plt", true), (".plt.sec", false), (".plt.got", false)] {
            let Some(section) = self.section(name) else {
                continue;
            };
            let Some(bytes) = self.contents(section) else {
                continue;
            };
            let decoded = self.decode(section, &bytes, &slots);
            if !decoded.is_empty() {
                out.extend(decoded);
            } else if name == ".plt" && header {
                out.extend(self.by_order(section));
            }
        }
        out
    }

    /// x86-64 stubs: each 16-byte (or, in `.plt.got`, 8-byte) entry holds a
    /// `jmp *disp32(%rip)` (`ff 25`, maybe after `endbr64` and a `bnd` prefix), whose
    /// target is the GOT slot.
    fn decode(
        &self,
        section: &Section,
        bytes: &[u8],
        slots: &[(u64, String)],
    ) -> Vec<(Range<u64>, String)> {
        if self.machine != EM_X86_64 {
            return Vec::new();
        }
        let entry = if section.name == ".plt.got" { 8 } else { 16 };
        bytes
            .chunks(entry)
            .enumerate()
            .filter_map(|(i, chunk)| {
                let at = chunk.windows(2).position(|w| w == [0xff, 0x25])?;
                let displacement = i32::from_le_bytes(chunk.get(at + 2..at + 6)?.try_into().ok()?);
                let start = section.address + (i * entry) as u64;
                let slot = (start + at as u64 + 6).wrapping_add(displacement as i64 as u64);
                let name = slots.iter().find(|(s, _)| *s == slot)?.1.clone();
                Some((start..start + entry as u64, name))
            })
            .collect()
    }

    /// A lazy `.plt`'s stubs in `.rela.plt` order, after its header.
    fn by_order(&self, plt: &Section) -> Vec<(Range<u64>, String)> {
        let header = match self.machine {
            EM_X86_64 => 16,
            EM_AARCH64 => 32,
            _ => return Vec::new(),
        };
        let Some(relocations) = self.section(".rela.plt") else {
            return Vec::new();
        };
        self.relocations(relocations)
            .into_iter()
            .enumerate()
            .map(|(i, (_, name))| {
                let start = plt.address + header + 16 * i as u64;
                (start..start + 16, name)
            })
            .filter(|(range, _)| range.end <= plt.address + plt.size)
            .collect()
    }

    /// GOT slot addresses and the names of the functions that fill them (`.rela.plt`
    /// and `.rela.dyn`).
    fn slot_names(&self) -> Vec<(u64, String)> {
        [".rela.plt", ".rela.dyn"]
            .iter()
            .filter_map(|name| self.section(name))
            .flat_map(|section| self.relocations(section))
            .collect()
    }

    /// `(offset, symbol name)` of each RELA relocation of `section` that names a symbol.
    fn relocations(&self, section: &Section) -> Vec<(u64, String)> {
        if section.kind != SHT_RELA {
            return Vec::new();
        }
        let Some(symbols) = self.sections.get(section.link as usize) else {
            return Vec::new();
        };
        let Some(strings) = self.sections.get(symbols.link as usize) else {
            return Vec::new();
        };
        let (Some(relocations), Some(symbols), Some(strings)) = (
            self.contents(section),
            self.contents(symbols),
            self.contents(strings),
        ) else {
            return Vec::new();
        };
        relocations
            .chunks_exact(24)
            .filter_map(|r| {
                let offset = u64_at(r, 0)?;
                let symbol = usize::try_from(u64_at(r, 8)? >> 32).ok()?;
                if symbol == 0 {
                    return None;
                }
                let name = u32_at(&symbols, symbol.checked_mul(24)?)?;
                let name = c_string(&strings, name as usize)?;
                (!name.is_empty()).then_some((offset, name))
            })
            .collect()
    }
}

/// The NUL-terminated string at `at`.
fn c_string(bytes: &[u8], at: usize) -> Option<String> {
    let rest = bytes.get(at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stub of this test binary has a name, lies in its text mapping and is named
    /// after its function with `@plt`, as objdump names it. (Which functions have stubs
    /// depends on the build: a release build calls most through the GOT, and its lib
    /// tests keep two stubs, `_Unwind_Resume` among them.)
    #[test]
    fn stubs_of_this_executable_are_named() {
        let file = File::open("/proc/self/exe").expect("exe");
        let elf = Elf::read(&file).expect("an ELF file");
        let stubs = elf.stubs();
        let main = mappings::process().remove(0);
        let bias = elf.bias(&main).expect("a bias");
        assert_eq!(bias, main.bias, "the maps line and dl_iterate_phdr agree");
        for (range, name) in &stubs {
            assert!(!name.is_empty());
            assert!(
                main.holds(range.start.wrapping_add(bias)),
                "{name} at {range:x?}"
            );
        }
        if cfg!(all(target_arch = "x86_64", target_env = "gnu")) {
            // A fixed anchor: every build of a Rust test binary calls `_Unwind_Resume`
            // through a stub, as objdump names it.
            let (range, _) = stubs
                .iter()
                .find(|(_, stub)| stub == "_Unwind_Resume")
                .unwrap_or_else(|| panic!("no _Unwind_Resume stub in {stubs:?}"));
            let inside = range.start.wrapping_add(bias) + 3;
            assert_eq!(name(inside).as_deref(), Some("_Unwind_Resume@plt"));
            for (range, stub) in &stubs {
                let inside = range.start.wrapping_add(bias) + 3;
                assert_eq!(name(inside), Some(format!("{stub}@plt")));
            }
        }
    }

    #[test]
    fn strings_end_at_nul() {
        assert_eq!(c_string(b"\0memcpy\0x", 1).as_deref(), Some("memcpy"));
        assert_eq!(c_string(b"abc", 0), None);
        assert_eq!(c_string(b"", 4), None);
    }
}
