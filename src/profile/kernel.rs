//! Kernel addresses to function names, from `/proc/kallsyms`.
//!
//! The kernel lists its functions with their start addresses; an address belongs to the
//! function with the greatest start at or below it. Without the privilege to see them
//! (`kptr_restrict`), every address reads as zero and kernel frames stay unnamed.

/// The file pprof shows for kernel functions, as Linux `perf` names the kernel image.
pub const KERNEL_FILE: &str = "[kernel.kallsyms]";

/// Kernel text symbols, sorted by address.
pub struct KernelSymbols {
    starts: Vec<u64>,
    names: Vec<String>,
}

impl KernelSymbols {
    /// Reads `/proc/kallsyms`; `Err` says why names are not available.
    pub fn load() -> Result<KernelSymbols, String> {
        let text = std::fs::read_to_string("/proc/kallsyms")
            .map_err(|e| format!("cannot read /proc/kallsyms: {e}"))?;
        let symbols = KernelSymbols::parse(&text);
        if symbols.starts.is_empty() {
            return Err("/proc/kallsyms shows no addresses (kernel.kptr_restrict)".into());
        }
        Ok(symbols)
    }

    /// Parses kallsyms lines (`ffffffff81000000 T _stext`, maybe `\t[module]` after),
    /// keeping code symbols with a non-zero address.
    pub fn parse(text: &str) -> KernelSymbols {
        let mut symbols: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                let code = matches!(kind, "t" | "T" | "w" | "W");
                (code && address != 0).then_some((address, name))
            })
            .collect();
        symbols.sort_by_key(|&(address, _)| address);
        KernelSymbols {
            starts: symbols.iter().map(|&(a, _)| a).collect(),
            names: symbols.iter().map(|&(_, n)| n.to_owned()).collect(),
        }
    }

    /// From the first code symbol to the last (modules included): the span of the
    /// `[kernel.kallsyms]` mapping of a profile.
    pub fn text(&self) -> Option<std::ops::Range<u64>> {
        Some(*self.starts.first()?..self.starts.last()?.saturating_add(1))
    }

    /// The function containing `address`, if it lies in the kernel's text.
    pub fn name(&self, address: u64) -> Option<&str> {
        let index = self.starts.partition_point(|&start| start <= address);
        self.names.get(index.checked_sub(1)?).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_the_function_that_contains_them() {
        let symbols = KernelSymbols::parse(
            "ffffffff81000200 T tcp_sendmsg\n\
             ffffffff81000100 t io_submit_sqes\n\
             ffffffff81000300 D some_data\n\
             ffffffffc0000000 t ext4_write\t[ext4]\n\
             0000000000000000 T hidden\n",
        );
        assert_eq!(symbols.name(0xffff_ffff_8100_0100), Some("io_submit_sqes"));
        assert_eq!(symbols.name(0xffff_ffff_8100_01ff), Some("io_submit_sqes"));
        assert_eq!(
            symbols.name(0xffff_ffff_8100_0350),
            Some("tcp_sendmsg"),
            "data is skipped"
        );
        assert_eq!(symbols.name(0xffff_ffff_c000_0010), Some("ext4_write"));
        assert_eq!(symbols.name(0xffff_ffff_8000_0000), None);
        assert_eq!(
            symbols.text(),
            Some(0xffff_ffff_8100_0100..0xffff_ffff_c000_0001)
        );
    }

    #[test]
    fn restricted_kallsyms_has_no_symbols() {
        let symbols = KernelSymbols::parse("0000000000000000 T _stext\n0000000000000000 t x\n");
        assert_eq!(symbols.name(0), None);
    }
}
