//! pprof's profile format (`profile.proto`, as `go tool pprof` reads it), written by hand.
//!
//! Every profile kind (CPU, heap, goroutine, block) builds its answer the same way: a
//! [`Builder`] with the kind's sample types, then one [`Builder::add_sample`] per distinct
//! stack, then [`Builder::gzip`]. Stacks are given as [`Frame`]s: code addresses, which the
//! builder symbolizes once per distinct address (with inlined functions, see
//! [`super::symbols`]), kernel addresses with their names, or names only (synthetic
//! frames such as a connection state). Every profile carries the process's mappings
//! ([`super::mappings`]: the main executable first, with its build ID) and every location
//! points at the mapping that holds its address, as Go and `perf` write them: that is
//! how pprof finds the binary for `-disasm`. The encoder is a few dozen lines of protobuf
//! wire format rather than a generated codec: the format is small and stable, and this
//! keeps the profile code free of any one profiler crate.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use super::kernel::KERNEL_FILE;
use super::mappings::{self, Mapping};
use super::symbols::{self, Symbol};

mod wire;
use wire::{bytes_field, int_field, packed, value_type};

/// The file of the mapping that holds the frames that are not code (a connection state, a
/// worker): pprof leaves names in brackets alone, as it does `[vdso]`.
pub const SYNTHETIC_FILE: &str = "[synthetic]";
/// Where the made-up addresses of frames that are not code start: far below anything the
/// kernel maps for a process (`vm.mmap_min_addr`), so they never meet a code address.
const SYNTHETIC_BASE: u64 = 0x1000;

/// One frame of a recorded stack, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    /// The address of an instruction in this process: the program counter of an
    /// interrupted thread, or for a caller its call instruction (see [`call_address`]).
    /// The location stores this address and is named by what is at it, so pprof's
    /// `disasm`, `list` and `/debug/pprof/symbol` agree with the profile's names.
    Code { address: u64 },
    /// An instruction in the kernel (the same convention), named from kallsyms.
    Kernel { address: u64, name: String },
    /// A frame known by name only, not code: a synthetic frame of a profile about
    /// something else (a worker, a connection state).
    Named { name: String, file: &'static str },
}

/// The call instruction a return address returns from: any byte of it names the call,
/// and one byte before the return address is always one. Go and `perf` store this for
/// every frame but the innermost (a return address may already be the next line, or past
/// the end of a function that ends with a call that never returns).
pub fn call_address(return_address: u64) -> u64 {
    return_address.saturating_sub(1)
}

impl Frame {
    /// The frames of a walked stack, innermost first, from its return addresses, except
    /// the first when it is the exact program counter of an interrupted thread
    /// (`first_exact`).
    pub fn walked(addresses: &[u64], first_exact: bool) -> Vec<Frame> {
        addresses
            .iter()
            .enumerate()
            .map(|(i, &address)| Frame::Code {
                address: if i == 0 && first_exact {
                    address
                } else {
                    call_address(address)
                },
            })
            .collect()
    }
}

/// A mapping of the profile, and what its locations are known to carry (pprof
/// symbolizes again only a mapping that does not say it has functions).
struct MappingSlot {
    mapping: Mapping,
    used: bool,
    all_files: bool,
    all_lines: bool,
}

impl MappingSlot {
    fn new(mapping: Mapping) -> MappingSlot {
        MappingSlot {
            mapping,
            used: false,
            all_files: true,
            all_lines: true,
        }
    }
}

/// A profile under construction; see the module documentation.
pub struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    sample_types: Vec<(i64, i64)>,
    period_type: (i64, i64),
    period: i64,
    default_sample_type: i64,
    comments: Vec<i64>,
    time_nanos: i64,
    duration_nanos: i64,
    /// `(name, file)` string ids to function id.
    functions: HashMap<(i64, i64), u64>,
    /// Encoded `Function` messages, in id order.
    function_msgs: Vec<Vec<u8>>,
    /// The process's code mappings (the main executable first), then the kernel's and
    /// the synthetic one when used; a mapping's id is its index plus one.
    mappings: Vec<MappingSlot>,
    /// The process's mappings by run-time address: (start, limit, index), sorted.
    by_address: Vec<(u64, u64, usize)>,
    kernel_mapping: Option<usize>,
    /// The kernel's text as kallsyms shows it, and the kernel addresses seen.
    kernel_text: Option<Range<u64>>,
    kernel_seen: Option<Range<u64>>,
    synthetic_mapping: Option<usize>,
    synthetic_addresses: HashMap<(String, &'static str), u64>,
    /// Each frame's functions (innermost first), as an index into `symbolized`; `None`
    /// for code outside every mapping.
    lines: HashMap<Frame, Option<usize>>,
    symbolized: Vec<Vec<Symbol>>,
    /// Location ids of each frame, by the number of leading functions left out.
    locations: HashMap<Frame, Vec<(usize, u64)>>,
    location_msgs: Vec<Vec<u8>>,
    sample_msgs: Vec<Vec<u8>>,
    trim: Option<fn(&str) -> bool>,
    /// The outermost function left out of each trimmed stack (the one the first function
    /// shown called), with the number of stacks.
    trimmed: BTreeMap<String, u64>,
    trimmed_stacks: u64,
}

impl Builder {
    /// A profile whose samples carry `sample_types` values (`(type, unit)` pairs, such as
    /// `("samples", "count")`, `("cpu", "nanoseconds")`), each taken once per `period` of
    /// `period_type`. Reads the process's mappings, so that every profile names the
    /// binary its addresses belong to.
    pub fn new(sample_types: &[(&str, &str)], period_type: (&str, &str), period: i64) -> Builder {
        let mappings: Vec<MappingSlot> = mappings::process()
            .into_iter()
            .map(MappingSlot::new)
            .collect();
        let mut by_address: Vec<(u64, u64, usize)> = mappings
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let bias = slot.mapping.bias;
                let start = slot.mapping.start.wrapping_add(bias);
                (start, slot.mapping.limit.wrapping_add(bias), i)
            })
            .collect();
        by_address.sort_unstable();
        let mut builder = Builder {
            strings: Vec::new(),
            string_ids: HashMap::new(),
            sample_types: Vec::new(),
            period_type: (0, 0),
            period,
            default_sample_type: 0,
            comments: Vec::new(),
            time_nanos: 0,
            duration_nanos: 0,
            functions: HashMap::new(),
            function_msgs: Vec::new(),
            mappings,
            by_address,
            kernel_mapping: None,
            kernel_text: None,
            kernel_seen: None,
            synthetic_mapping: None,
            synthetic_addresses: HashMap::new(),
            lines: HashMap::new(),
            symbolized: Vec::new(),
            locations: HashMap::new(),
            location_msgs: Vec::new(),
            sample_msgs: Vec::new(),
            trim: None,
            trimmed: BTreeMap::new(),
            trimmed_stacks: 0,
        };
        builder.string(""); // the string table starts with the empty string
        builder.sample_types = sample_types
            .iter()
            .map(|(ty, unit)| (builder.string(ty), builder.string(unit)))
            .collect();
        builder.period_type = (builder.string(period_type.0), builder.string(period_type.1));
        builder
    }

    /// The sample type `go tool pprof` shows unless told otherwise (Go sets it for heap
    /// profiles: `inuse_space` for `heap`, `alloc_space` for `allocs`).
    pub fn default_sample_type(&mut self, ty: &str) {
        self.default_sample_type = self.string(ty);
    }

    /// When the profile starts, and the window it covers.
    pub fn time(&mut self, start: SystemTime, duration: Duration) {
        let since_epoch = start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.time_nanos = i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX);
        self.duration_nanos = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
    }

    /// The kernel's text (from kallsyms): the `[kernel.kallsyms]` mapping spans it, and
    /// any kernel address a sample holds beyond it.
    pub fn kernel_text(&mut self, text: Range<u64>) {
        self.kernel_text = Some(text);
    }

    /// Leaves out the functions `hidden` accepts at the top of every stack, up to the
    /// first function it does not accept, as Go's heap profiles start at the allocating
    /// function rather than in `runtime.mallocgc`. Inlined functions count one by one:
    /// a location whose innermost functions are hidden keeps the rest. A stack made only
    /// of hidden functions is kept whole, as Go keeps it. Set it before adding samples;
    /// [`Builder::trimmed`] says what was left out.
    pub fn trim_leading(&mut self, hidden: fn(&str) -> bool) {
        self.trim = Some(hidden);
    }

    /// The stacks that were trimmed, and for each the outermost function left out (the
    /// one the first function shown called), with the number of stacks, most frequent
    /// first.
    pub fn trimmed(&self) -> (u64, Vec<(String, u64)>) {
        let mut names: Vec<(String, u64)> = self
            .trimmed
            .iter()
            .map(|(name, &count)| (name.clone(), count))
            .collect();
        names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        (self.trimmed_stacks, names)
    }

    /// A free-text comment; `go tool pprof -comments` prints them.
    pub fn comment(&mut self, text: &str) {
        let id = self.string(text);
        self.comments.push(id);
    }

    /// One sample: a stack (innermost frame first), one value per sample type, and
    /// string labels (`go tool pprof -tags`). A code address outside every mapping (a
    /// walk gone astray) ends the stack there.
    pub fn add_sample(&mut self, stack: &[Frame], values: &[i64], labels: &[(&str, &str)]) {
        debug_assert_eq!(values.len(), self.sample_types.len());
        let location_ids = match self.trim {
            Some(hidden) => {
                let (ids, mut left_out) = self.locations_of(stack, Some(hidden));
                if ids.is_empty() && !left_out.is_empty() {
                    self.locations_of(stack, None).0
                } else {
                    if let Some(outermost) = left_out.pop() {
                        self.trimmed_stacks += 1;
                        *self.trimmed.entry(outermost).or_insert(0) += 1;
                    }
                    ids
                }
            }
            None => self.locations_of(stack, None).0,
        };
        let mut msg = Vec::new();
        packed(&mut msg, 1, &location_ids);
        let values: Vec<u64> = values.iter().map(|&v| v as u64).collect();
        packed(&mut msg, 2, &values);
        for (key, value) in labels {
            let mut label = Vec::new();
            int_field(&mut label, 1, self.string(key) as u64);
            int_field(&mut label, 2, self.string(value) as u64);
            bytes_field(&mut msg, 3, &label);
        }
        self.sample_msgs.push(msg);
    }

    /// The location ids of `stack`, with the leading functions `hidden` accepts left
    /// out (and their names, innermost first).
    fn locations_of(
        &mut self,
        stack: &[Frame],
        hidden: Option<fn(&str) -> bool>,
    ) -> (Vec<u64>, Vec<String>) {
        let mut ids = Vec::with_capacity(stack.len());
        let mut left_out: Vec<String> = Vec::new();
        let mut trimming = hidden;
        for frame in stack {
            let Some(lines) = self.lines_of(frame) else {
                break;
            };
            let mut skip = 0;
            if let Some(hidden) = trimming {
                let symbols = &self.symbolized[lines];
                skip = symbols.iter().take_while(|s| hidden(&s.name)).count();
                left_out.extend(symbols[..skip].iter().map(|s| s.name.clone()));
                if skip == symbols.len() {
                    continue;
                }
                trimming = None;
            }
            ids.push(self.location(frame, lines, skip));
        }
        (ids, left_out)
    }

    /// The encoded profile (`profile.proto`), uncompressed.
    pub fn encode(mut self) -> Vec<u8> {
        let mapping_msgs = self.mapping_msgs();
        let mut out = Vec::new();
        for &(ty, unit) in &self.sample_types {
            bytes_field(&mut out, 1, &value_type(ty, unit));
        }
        for msg in &self.sample_msgs {
            bytes_field(&mut out, 2, msg);
        }
        for msg in &mapping_msgs {
            bytes_field(&mut out, 3, msg);
        }
        for msg in &self.location_msgs {
            bytes_field(&mut out, 4, msg);
        }
        for msg in &self.function_msgs {
            bytes_field(&mut out, 5, msg);
        }
        for text in &self.strings {
            bytes_field(&mut out, 6, text.as_bytes());
        }
        int_field(&mut out, 9, self.time_nanos as u64);
        int_field(&mut out, 10, self.duration_nanos as u64);
        bytes_field(
            &mut out,
            11,
            &value_type(self.period_type.0, self.period_type.1),
        );
        int_field(&mut out, 12, self.period as u64);
        let comments: Vec<u64> = self.comments.iter().map(|&c| c as u64).collect();
        packed(&mut out, 13, &comments);
        int_field(&mut out, 14, self.default_sample_type as u64);
        out
    }

    /// The encoded profile, gzip-compressed as Go's `net/http/pprof` serves it.
    pub fn gzip(self) -> std::io::Result<Vec<u8>> {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(&self.encode())?;
        gzip.finish()
    }

    /// Every mapping as a `Mapping` message. Every one says it has functions: each
    /// location was named here (pprof would otherwise symbolize the binary again, by C++
    /// rules, and say "Main binary filename not available" where it has none); files
    /// and lines where every location of the mapping has them.
    fn mapping_msgs(&mut self) -> Vec<Vec<u8>> {
        if let Some(index) = self.kernel_mapping {
            let seen = self.kernel_seen.clone().unwrap_or(0..0);
            let (start, limit) = match &self.kernel_text {
                Some(text) => (text.start.min(seen.start), text.end.max(seen.end)),
                None => (seen.start, seen.end),
            };
            let mapping = &mut self.mappings[index].mapping;
            mapping.start = start;
            mapping.limit = limit;
        }
        if let Some(index) = self.synthetic_mapping {
            let count = self.synthetic_addresses.len() as u64;
            self.mappings[index].mapping.limit = SYNTHETIC_BASE + count.max(1);
        }
        let slots: Vec<(Mapping, bool, bool)> = self
            .mappings
            .iter()
            .map(|slot| {
                (
                    slot.mapping.clone(),
                    slot.used && slot.all_files,
                    slot.used && slot.all_lines,
                )
            })
            .collect();
        slots
            .into_iter()
            .enumerate()
            .map(|(index, (mapping, files, lines))| {
                let mut msg = Vec::new();
                int_field(&mut msg, 1, index as u64 + 1);
                int_field(&mut msg, 2, mapping.start);
                int_field(&mut msg, 3, mapping.limit);
                int_field(&mut msg, 4, mapping.offset);
                int_field(&mut msg, 5, self.string(&mapping.file) as u64);
                int_field(&mut msg, 6, self.string(&mapping.build_id) as u64);
                int_field(&mut msg, 7, 1);
                int_field(&mut msg, 8, u64::from(files));
                int_field(&mut msg, 9, u64::from(lines));
                // Inlined functions come with the lines, from the same debug information.
                int_field(&mut msg, 10, u64::from(lines));
                msg
            })
            .collect()
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(text.to_owned());
        self.string_ids.insert(text.to_owned(), id);
        id
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (self.string(name), self.string(file));
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.function_msgs.len() as u64 + 1;
        let mut msg = Vec::new();
        int_field(&mut msg, 1, id);
        int_field(&mut msg, 2, key.0 as u64);
        // No system_name: pprof "demangles" a name equal to its system name by C++ rules,
        // which strips Rust's `<Type as Trait>` down to `::method`.
        int_field(&mut msg, 4, key.1 as u64);
        self.function_msgs.push(msg);
        self.functions.insert(key, id);
        id
    }

    /// The index of the process mapping that holds the run-time address `address`.
    fn process_mapping(&self, address: u64) -> Option<usize> {
        let after = self
            .by_address
            .partition_point(|&(start, _, _)| start <= address);
        let &(start, limit, index) = self.by_address.get(after.checked_sub(1)?)?;
        (start..limit).contains(&address).then_some(index)
    }

    /// A mapping made here (the kernel's, the synthetic one) on first use.
    fn extra_mapping(&mut self, file: &str, build_id: String) -> usize {
        self.mappings.push(MappingSlot::new(Mapping {
            start: 0,
            limit: 0,
            offset: 0,
            file: file.to_owned(),
            build_id,
            bias: 0,
        }));
        self.mappings.len() - 1
    }

    /// The functions at `frame`, innermost (inlined) first, looked up once per frame (an
    /// index into `symbolized`); `None` for a code address outside every mapping.
    fn lines_of(&mut self, frame: &Frame) -> Option<usize> {
        if let Some(&lines) = self.lines.get(frame) {
            return lines;
        }
        let symbols = match frame {
            Frame::Code { address } => self.process_mapping(*address).map(|index| {
                let mut symbols = symbols::lookup(*address);
                if symbols.is_empty() {
                    // Named by its address as the profile states it, which is what
                    // pprof and /debug/pprof/symbol see.
                    let stated = self.mappings[index].mapping.profile_address(*address);
                    symbols.push(Symbol {
                        name: format!("{stated:#x}"),
                        file: String::new(),
                        line: 0,
                    });
                }
                symbols
            }),
            Frame::Kernel { name, .. } => Some(vec![Symbol {
                name: name.clone(),
                file: KERNEL_FILE.to_owned(),
                line: 0,
            }]),
            Frame::Named { name, file } => Some(vec![Symbol {
                name: name.clone(),
                file: (*file).to_owned(),
                line: 0,
            }]),
        };
        let lines = symbols.map(|symbols| {
            self.symbolized.push(symbols);
            self.symbolized.len() - 1
        });
        self.lines.insert(frame.clone(), lines);
        lines
    }

    /// The location id of `frame` with its first `skip` functions left out.
    fn location(&mut self, frame: &Frame, lines: usize, skip: usize) -> u64 {
        let known = self.locations.get(frame).and_then(|ids| {
            ids.iter()
                .find(|&&(skipped, _)| skipped == skip)
                .map(|&(_, id)| id)
        });
        if let Some(id) = known {
            return id;
        }
        let (mapping, address) = match frame {
            Frame::Code { address } => {
                let index = self.process_mapping(*address);
                let stated = index.map_or(*address, |i| {
                    self.mappings[i].mapping.profile_address(*address)
                });
                (index, stated)
            }
            Frame::Kernel { address, .. } => {
                let index = match self.kernel_mapping {
                    Some(index) => index,
                    None => {
                        let index = self.extra_mapping(KERNEL_FILE, mappings::kernel_build_id());
                        self.kernel_mapping = Some(index);
                        index
                    }
                };
                let end = address.saturating_add(1);
                self.kernel_seen = Some(match self.kernel_seen.take() {
                    Some(seen) => seen.start.min(*address)..seen.end.max(end),
                    None => *address..end,
                });
                (Some(index), *address)
            }
            Frame::Named { name, file } => {
                let index = match self.synthetic_mapping {
                    Some(index) => index,
                    None => {
                        let index = self.extra_mapping(SYNTHETIC_FILE, String::new());
                        self.mappings[index].mapping.start = SYNTHETIC_BASE;
                        self.synthetic_mapping = Some(index);
                        index
                    }
                };
                let next = SYNTHETIC_BASE + self.synthetic_addresses.len() as u64;
                let address = *self
                    .synthetic_addresses
                    .entry((name.clone(), *file))
                    .or_insert(next);
                (Some(index), address)
            }
        };
        let kept: Vec<Symbol> = self.symbolized[lines][skip..].to_vec();
        if let Some(index) = mapping {
            let slot = &mut self.mappings[index];
            slot.used = true;
            slot.all_files &= kept.iter().all(|s| !s.file.is_empty());
            slot.all_lines &= kept.iter().all(|s| s.line > 0);
        }
        let id = self.location_msgs.len() as u64 + 1;
        let mut msg = Vec::new();
        int_field(&mut msg, 1, id);
        if let Some(index) = mapping {
            int_field(&mut msg, 2, index as u64 + 1);
        }
        int_field(&mut msg, 3, address);
        // pprof lists a location's inlined functions innermost first, as resolve does.
        for symbol in &kept {
            let function_id = self.function(&symbol.name, &symbol.file);
            let mut line = Vec::new();
            int_field(&mut line, 1, function_id);
            int_field(&mut line, 2, symbol.line as u64);
            bytes_field(&mut msg, 4, &line);
        }
        self.location_msgs.push(msg);
        self.locations
            .entry(frame.clone())
            .or_default()
            .push((skip, id));
        id
    }
}

#[cfg(test)]
mod tests;
