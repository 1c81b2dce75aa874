//! Code addresses to function names, files and lines, after sampling has stopped.
//!
//! Samplers record bare addresses (cheap and safe in a signal handler or an allocator
//! hook); names are looked up here, on the admin thread, when a profile is encoded. The
//! `backtrace` crate reads the DWARF of the executable and of every loaded library
//! (release builds keep `debug = "limited"`), so inlined functions come back as frames
//! of their own, innermost first, the way pprof wants them.

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
    // `backtrace::resolve` always looks up one byte before the address it is given (it
    // expects return addresses), so an exact address is passed one byte on.
    let lookup = if is_return {
        address
    } else {
        address.saturating_add(1)
    };
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
        symbols.push(Symbol {
            name: format!("{address:#x}"),
            file: String::new(),
            line: 0,
        });
    }
    symbols
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
    fn an_unknown_address_is_named_by_its_value() {
        assert_eq!(resolve(0x10, false)[0].name, "0x10");
    }
}
