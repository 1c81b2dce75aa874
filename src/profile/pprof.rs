//! pprof's profile format (`profile.proto`, as `go tool pprof` reads it), written by hand.
//!
//! Every profile kind (CPU, heap, goroutine, block) builds its answer the same way: a
//! [`Builder`] with the kind's sample types, then one [`Builder::add_sample`] per distinct
//! stack, then [`Builder::gzip`]. Stacks are given as [`Frame`]s: code addresses, which the
//! builder symbolizes once per distinct address (with inlined functions, see
//! [`super::symbols`]), or names (kernel functions, synthetic frames such as a connection
//! state). The encoder is a few dozen lines of protobuf wire format rather than a
//! generated codec: the format is small and stable, and this keeps the profile code free of
//! any one profiler crate.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use super::symbols;

/// One frame of a recorded stack, innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    /// A code address in this process. `is_return` is true for every frame but the
    /// innermost one of a walked stack: a return address, which points after the call,
    /// so it is symbolized one byte earlier (at the call instruction).
    Code { address: u64, is_return: bool },
    /// A frame known by name only: a kernel function, or a synthetic frame of a profile
    /// that is not about code (a worker, a connection state).
    Named { name: String, file: &'static str },
}

impl Frame {
    /// The frames of a walked stack, innermost first: return addresses, except the first
    /// when it is the exact program counter of an interrupted thread (`first_exact`).
    pub fn walked(addresses: &[u64], first_exact: bool) -> Vec<Frame> {
        addresses
            .iter()
            .enumerate()
            .map(|(i, &address)| Frame::Code {
                address,
                is_return: i > 0 || !first_exact,
            })
            .collect()
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
    /// Location id per frame; `None` for a frame made only of hidden functions.
    locations: HashMap<Frame, Option<u64>>,
    location_msgs: Vec<Vec<u8>>,
    sample_msgs: Vec<Vec<u8>>,
    hidden: fn(&str) -> bool,
}

impl Builder {
    /// A profile whose samples carry `sample_types` values (`(type, unit)` pairs, such as
    /// `("samples", "count")`, `("cpu", "nanoseconds")`), each taken once per `period` of
    /// `period_type`.
    pub fn new(sample_types: &[(&str, &str)], period_type: (&str, &str), period: i64) -> Builder {
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
            locations: HashMap::new(),
            location_msgs: Vec::new(),
            sample_msgs: Vec::new(),
            hidden: |_| false,
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

    /// Leaves functions whose name `hidden` accepts out of every stack (inlined ones
    /// too), as Go's heap profiles leave out the allocator (`runtime.mallocgc`). Set it
    /// before adding samples.
    pub fn hide(&mut self, hidden: fn(&str) -> bool) {
        self.hidden = hidden;
    }

    /// A free-text comment; `go tool pprof -comments` prints them.
    pub fn comment(&mut self, text: &str) {
        let id = self.string(text);
        self.comments.push(id);
    }

    /// One sample: a stack (innermost frame first), one value per sample type, and
    /// string labels (`go tool pprof -tags`).
    pub fn add_sample(&mut self, stack: &[Frame], values: &[i64], labels: &[(&str, &str)]) {
        debug_assert_eq!(values.len(), self.sample_types.len());
        let location_ids: Vec<u64> = stack
            .iter()
            .filter_map(|frame| self.location(frame))
            .collect();
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

    /// The encoded profile (`profile.proto`), uncompressed.
    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::new();
        for &(ty, unit) in &self.sample_types {
            bytes_field(&mut out, 1, &value_type(ty, unit));
        }
        for msg in &self.sample_msgs {
            bytes_field(&mut out, 2, msg);
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

    /// The location id of `frame`, symbolizing it the first time it is seen; `None` if
    /// all its functions are hidden.
    fn location(&mut self, frame: &Frame) -> Option<u64> {
        if let Some(&id) = self.locations.get(frame) {
            return id;
        }
        let mut lines = match frame {
            Frame::Code { address, is_return } => symbols::resolve(*address, *is_return),
            Frame::Named { name, file } => vec![symbols::Symbol {
                name: name.clone(),
                file: (*file).to_owned(),
                line: 0,
            }],
        };
        let hidden = self.hidden;
        lines.retain(|symbol| !hidden(&symbol.name));
        if lines.is_empty() {
            self.locations.insert(frame.clone(), None);
            return None;
        }
        let id = self.location_msgs.len() as u64 + 1;
        let mut msg = Vec::new();
        int_field(&mut msg, 1, id);
        if let Frame::Code { address, .. } = frame {
            int_field(&mut msg, 3, *address);
        }
        // pprof lists a location's inlined functions innermost first, as resolve does.
        for symbol in &lines {
            let function_id = self.function(&symbol.name, &symbol.file);
            let mut line = Vec::new();
            int_field(&mut line, 1, function_id);
            int_field(&mut line, 2, symbol.line as u64);
            bytes_field(&mut msg, 4, &line);
        }
        self.location_msgs.push(msg);
        self.locations.insert(frame.clone(), Some(id));
        Some(id)
    }
}

fn value_type(ty: i64, unit: i64) -> Vec<u8> {
    let mut msg = Vec::new();
    int_field(&mut msg, 1, ty as u64);
    int_field(&mut msg, 2, unit as u64);
    msg
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A varint field (wire type 0); zero is the default and is left out.
fn int_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        varint(out, u64::from(field) << 3);
        varint(out, value);
    }
}

/// A length-delimited field (wire type 2): a string, bytes or an embedded message.
fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A packed repeated varint field.
fn packed(out: &mut Vec<u8>, field: u32, values: &[u64]) {
    if values.is_empty() {
        return;
    }
    let mut body = Vec::new();
    for &value in values {
        varint(&mut body, value);
    }
    bytes_field(out, field, &body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pprof::protos::Message;

    fn named(name: &str) -> Frame {
        Frame::Named {
            name: name.to_owned(),
            file: "",
        }
    }

    #[test]
    fn varints_as_protobuf_writes_them() {
        let mut out = Vec::new();
        for value in [0, 1, 127, 128, 300, u64::MAX] {
            varint(&mut out, value);
        }
        assert_eq!(
            out,
            [
                0, 1, 127, 0x80, 1, 0xac, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                1
            ]
        );
    }

    #[test]
    fn a_reference_decoder_reads_what_the_builder_writes() {
        let mut b = Builder::new(
            &[("alloc_objects", "count"), ("alloc_space", "bytes")],
            ("space", "bytes"),
            524288,
        );
        b.default_sample_type("alloc_space");
        b.comment("a comment");
        b.time(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            Duration::from_millis(1500),
        );
        b.add_sample(
            &[named("leaf"), named("main")],
            &[3, 96],
            &[("state", "idle")],
        );
        b.add_sample(&[named("other"), named("main")], &[1, -5], &[]);
        let p = pprof::protos::Profile::decode(b.encode().as_slice()).expect("valid protobuf");

        let s = |id: i64| p.string_table[id as usize].as_str();
        assert_eq!(s(0), "");
        let types: Vec<_> = p.sample_type.iter().map(|t| (s(t.ty), s(t.unit))).collect();
        assert_eq!(
            types,
            [("alloc_objects", "count"), ("alloc_space", "bytes")]
        );
        let period_type = p.period_type.as_ref().expect("period type");
        assert_eq!(
            (s(period_type.ty), s(period_type.unit), p.period),
            ("space", "bytes", 524288)
        );
        assert_eq!(s(p.default_sample_type), "alloc_space");
        assert_eq!(
            p.comment.iter().map(|&c| s(c)).collect::<Vec<_>>(),
            ["a comment"]
        );
        assert_eq!(
            (p.time_nanos, p.duration_nanos),
            (1_000_000_000, 1_500_000_000)
        );

        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.sample[0].value, [3, 96]);
        assert_eq!(p.sample[1].value, [1, -5]);
        let label = &p.sample[0].label[0];
        assert_eq!((s(label.key), s(label.str)), ("state", "idle"));
        // "main" is one location and one function, shared by both samples.
        assert_eq!(p.sample[0].location_id[1], p.sample[1].location_id[1]);
        assert_eq!((p.location.len(), p.function.len()), (3, 3));
        let name_of = |location_id: u64| {
            let location = &p.location[location_id as usize - 1];
            assert_eq!(location.id, location_id);
            let function = &p.function[location.line[0].function_id as usize - 1];
            s(function.name).to_owned()
        };
        let stack: Vec<String> = p.sample[0]
            .location_id
            .iter()
            .map(|&id| name_of(id))
            .collect();
        assert_eq!(stack, ["leaf", "main"]);
    }

    #[test]
    fn hidden_functions_leave_the_stacks() {
        let mut b = Builder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 1);
        b.hide(|name| name.starts_with("alloc"));
        b.add_sample(
            &[named("alloc_inner"), named("caller"), named("main")],
            &[1],
            &[],
        );
        let p = pprof::protos::Profile::decode(b.encode().as_slice()).expect("valid protobuf");
        assert_eq!(p.sample[0].location_id.len(), 2, "the hidden frame is gone");
        assert_eq!(p.location.len(), 2);
    }

    #[inline(never)]
    fn a_known_function() -> u64 {
        a_known_function as *const () as u64
    }

    #[test]
    fn code_addresses_are_symbolized() {
        let address = a_known_function();
        let mut b = Builder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 1);
        b.add_sample(
            &[Frame::Code {
                address,
                is_return: false,
            }],
            &[1],
            &[],
        );
        let p = pprof::protos::Profile::decode(b.encode().as_slice()).expect("valid protobuf");
        assert_eq!(p.location[0].address, address);
        let function = &p.function[p.location[0].line[0].function_id as usize - 1];
        let name = &p.string_table[function.name as usize];
        assert!(name.ends_with("a_known_function"), "{name}");
    }
}
