//! Code addresses to function names, files and lines, after sampling has stopped.
//!
//! Samplers record bare addresses (cheap and safe in a signal handler or an allocator
//! hook); names are looked up here, on the admin thread, when a profile is encoded. The
//! `backtrace` crate reads the DWARF of the executable and of every loaded library
//! (release builds keep `debug = "limited"`), so inlined functions come back as frames
//! of their own, innermost first, the way pprof wants them. The vDSO has no file to read:
//! its functions (`__vdso_clock_gettime`) are named from its in-memory symbol table.

use std::ops::Range;
use std::sync::OnceLock;

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// One function at an address: the innermost inlined function first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub file: String,
    pub line: i64,
}

/// The functions at `address`, innermost (inlined) first; never empty: an address
/// without symbols is named by its hexadecimal value. A return address (`is_return`)
/// points after its call instruction, so the call is looked up one byte earlier.
pub fn resolve(address: u64, is_return: bool) -> Vec<Symbol> {
    if is_return {
        resolve_at(super::pprof::call_address(address))
    } else {
        resolve_at(address)
    }
}

/// The functions at the instruction at `address`, innermost (inlined) first, as
/// [`resolve`]: for a caller's frame, pass its call instruction
/// ([`super::pprof::call_address`]).
pub fn resolve_at(address: u64) -> Vec<Symbol> {
    let mut symbols = lookup(address);
    if symbols.is_empty() {
        symbols.push(Symbol {
            name: format!("{address:#x}"),
            file: String::new(),
            line: 0,
        });
    }
    symbols
}

/// The functions at the instruction at `address`, innermost first, as [`resolve_at`];
/// empty when nothing names it. A stub of the procedure linkage table is named as
/// `objdump` names it (`memcpy@plt`, see [`super::plt`]).
pub fn lookup(address: u64) -> Vec<Symbol> {
    if let Some(symbol) = vdso().and_then(|vdso| vdso.resolve(address)) {
        return vec![symbol];
    }
    // `backtrace::resolve` always looks up one byte before the address it is given (it
    // expects return addresses), so the exact address is passed one byte on.
    let lookup = address.saturating_add(1);
    let mut symbols = Vec::new();
    backtrace::resolve(lookup as usize as *mut std::ffi::c_void, |symbol| {
        let Some(name) = symbol.name() else { return };
        symbols.push(Symbol {
            // `{:#}` demangles without the trailing hash.
            name: format!("{name:#}"),
            file: symbol
                .filename()
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            line: symbol.lineno().map_or(0, i64::from),
        });
    });
    if symbols.is_empty() {
        if let Some(name) = super::plt::name(address) {
            symbols.push(Symbol {
                name,
                file: String::new(),
                line: 0,
            });
        }
    }
    symbols
}

/// Go's symbol look-up protocol (`/debug/pprof/symbol`): `+`-separated addresses (hex
/// with `0x`, or decimal) in, `num_symbols: 1` and then one `0xADDR name` line per
/// address that names a function out; unknown addresses are left out, as Go does. The
/// name is the innermost function at the address, as Go's `FuncForPC` answers and as a
/// profile's location names it (line 0), for a profile stores each caller's call
/// instruction. Addresses are taken as profiles state them (`super::mappings`: the main
/// executable's at its link-time values) or at run time.
pub fn go_symbol_lookup(addresses: &str) -> String {
    let mut out = String::from("num_symbols: 1\n");
    for word in addresses.split('+') {
        let word = word.trim();
        let parsed = match word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => word.parse().ok(),
        };
        let Some(address) = parsed.filter(|&a| a != 0) else {
            continue;
        };
        // A profile states main-executable addresses at the binary's own (link-time)
        // values; see `super::mappings`.
        let symbols = lookup(super::mappings::runtime_address(address));
        if let Some(symbol) = symbols.first().filter(|s| !s.name.starts_with("[vdso] 0x")) {
            out.push_str(&format!("{address:#x} {}\n", symbol.name));
        }
    }
    out
}

/// The vDSO's functions: where it is mapped and its dynamic symbols (absolute ranges).
struct Vdso {
    range: Range<u64>,
    functions: Vec<(Range<u64>, String)>,
}

impl Vdso {
    fn resolve(&self, address: u64) -> Option<Symbol> {
        if !self.range.contains(&address) {
            return None;
        }
        let name = self
            .functions
            .iter()
            .find(|(range, _)| range.contains(&address))
            .map_or_else(|| format!("[vdso] {address:#x}"), |(_, name)| name.clone());
        Some(Symbol {
            name,
            file: "[vdso]".into(),
            line: 0,
        })
    }
}

fn vdso() -> Option<&'static Vdso> {
    static VDSO: OnceLock<Option<Vdso>> = OnceLock::new();
    VDSO.get_or_init(load_vdso).as_ref()
}

/// Reads the vDSO's symbol table from its image in memory: the kernel maps the whole ELF
/// file at `AT_SYSINFO_EHDR`; its length is the `[vdso]` line of /proc/self/maps.
fn load_vdso() -> Option<Vdso> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let end = maps.lines().find_map(|line| {
        let (range, _) = line.split_once(' ')?;
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        (start == base && line.ends_with("[vdso]")).then(|| u64::from_str_radix(end, 16).ok())?
    })?;
    // SAFETY: the kernel maps the vDSO image, readable, at [base, end) for the life of the
    // process (the maps line just read says so).
    let image = unsafe { std::slice::from_raw_parts(base as *const u8, (end - base) as usize) };
    let file = object::File::parse(image).ok()?;
    let lowest = file.segments().map(|s| s.address()).min().unwrap_or(0);
    let bias = base.wrapping_sub(lowest);
    let functions = file
        .dynamic_symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.size() > 0)
        .filter_map(|symbol| {
            let start = bias.wrapping_add(symbol.address());
            Some((start..start + symbol.size(), symbol.name().ok()?.to_owned()))
        })
        .collect();
    Some(Vdso {
        range: base..end,
        functions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn named_for_the_test() -> u64 {
        named_for_the_test as *const () as u64
    }

    #[test]
    fn a_function_address_resolves_to_its_name_file_and_line() {
        let symbols = resolve(named_for_the_test(), false);
        let symbol = &symbols[0];
        assert!(
            symbol.name.ends_with("symbols::tests::named_for_the_test"),
            "{symbol:?}"
        );
        assert!(symbol.file.ends_with("symbols.rs"), "{symbol:?}");
        assert!(symbol.line > 0, "{symbol:?}");
    }

    #[test]
    #[cfg_attr(leftpad_emulated, ignore = "qemu-user maps no vDSO into the process")]
    fn vdso_functions_are_named() {
        let vdso = vdso().expect("Linux maps a vDSO into every process");
        let (range, name) = vdso.functions.first().expect("the vDSO exports functions");
        let symbol = resolve(range.start + 1, false).remove(0);
        assert_eq!((&symbol.name, symbol.file.as_str()), (name, "[vdso]"));
        assert!(vdso
            .functions
            .iter()
            .any(|(_, n)| n.contains("clock_gettime")));
    }

    #[test]
    fn the_go_symbol_protocol() {
        let known = named_for_the_test();
        assert_eq!(go_symbol_lookup(""), "num_symbols: 1\n");
        // 0x7ff0_0000_0000: no mapping of this process there, at run time or as the
        // executable's link-time address (a low one such as 0x10 can be, where the
        // executable's first segment starts at 0, as under qemu-user).
        let answer = go_symbol_lookup(&format!("{known:#x}+0x7ff000000000+junk+{known}"));
        let lines: Vec<&str> = answer.lines().collect();
        assert_eq!(lines.len(), 3, "{answer}");
        assert_eq!(lines[0], "num_symbols: 1");
        for line in &lines[1..] {
            assert!(line.starts_with(&format!("{known:#x} ")), "{line}");
            assert!(
                line.ends_with("symbols::tests::named_for_the_test"),
                "{line}"
            );
        }
    }

    #[test]
    fn an_unknown_address_is_named_by_its_value() {
        assert_eq!(resolve(0x10, false)[0].name, "0x10");
    }
}
