//! The bytes: header, string and stack tables, per-P batches of varint records, the
//! frequency.

use super::replay::Wire;
use super::*;

/// The bytes: header; per P one batch (the first also carrying the string and stack
/// tables, since Go 1.22+'s reader wants every record inside a batch); the frequency last,
/// where Go's runtime writes it.
pub(super) fn write(tables: &Symbols, ticks_per_sec: u64, wires: &[Wire]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER.len() + wires.len() * 8 + tables_size(tables));
    let mut scratch = Vec::new();
    buf.extend_from_slice(HEADER);
    let mut first = true;
    for batch in wires.chunk_by(|a, b| a.p == b.p) {
        let Some(head) = batch.first() else { continue };
        put_record(
            &mut buf,
            &mut scratch,
            ev::BATCH,
            &[u64::from(head.p), head.ts],
        );
        if first {
            put_tables(&mut buf, &mut scratch, tables);
            first = false;
        }
        // Timestamps are deltas from the previous event of the batch (the first from the
        // batch's own).
        let mut last = head.ts;
        for w in batch {
            put_wire(&mut buf, &mut scratch, tables, w, w.ts - last);
            last = w.ts;
        }
    }
    put_record(&mut buf, &mut scratch, ev::FREQUENCY, &[ticks_per_sec]);
    buf
}

pub(super) fn tables_size(tables: &Symbols) -> usize {
    let strings: usize = tables.strings.iter().map(|s| s.len() + 4).sum();
    strings + tables.stacks.len() * 32
}

pub(super) fn put_tables(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, tables: &Symbols) {
    for (i, s) in tables.strings.iter().enumerate() {
        put_string(buf, i as u64 + 1, s);
    }
    let mut args = Vec::new();
    for (i, frames) in tables.stacks.iter().enumerate() {
        args.clear();
        args.extend([i as u64 + 1, frames.len() as u64]);
        for f in frames {
            args.extend([f.pc, u64::from(f.function), u64::from(f.file), f.line]);
        }
        put_long_record(buf, scratch, ev::STACK, &args);
    }
}

pub(super) fn put_wire(
    buf: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    tables: &Symbols,
    w: &Wire,
    delta: u64,
) {
    let mut args = [0u64; 5];
    args[0] = delta;
    let n = usize::from(w.n).min(w.args.len());
    args[1..=n].copy_from_slice(&w.args[..n]);
    put_record(buf, scratch, w.typ, &args[..=n]);
    if w.typ == ev::USER_LOG {
        // A log's value follows its record inline, not in the string table.
        let value = tables.text(w.args[3]).as_bytes();
        put_uvarint(buf, value.len() as u64);
        buf.extend_from_slice(value);
    }
}

/// One record: the type with the argument count in its top two bits (count - 1; 3 means
/// "four or more, length-prefixed"), then the arguments as varints.
pub(super) fn put_record(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, typ: u8, args: &[u64]) {
    match args.len() {
        0 => buf.push(typ),
        n @ 1..=3 => {
            buf.push(typ | ((n as u8 - 1) << 6));
            for &a in args {
                put_uvarint(buf, a);
            }
        }
        _ => put_long_record(buf, scratch, typ, args),
    }
}

pub(super) fn put_long_record(buf: &mut Vec<u8>, scratch: &mut Vec<u8>, typ: u8, args: &[u64]) {
    scratch.clear();
    for &a in args {
        put_uvarint(scratch, a);
    }
    buf.push(typ | (3 << 6));
    put_uvarint(buf, scratch.len() as u64);
    buf.extend_from_slice(scratch);
}

/// A string table entry: id, length, bytes (the type byte carries no count).
pub(super) fn put_string(buf: &mut Vec<u8>, id: u64, s: &str) {
    buf.push(ev::STRING);
    put_uvarint(buf, id);
    put_uvarint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Go's unsigned varint: 7 bits a byte, least significant first, high bit "more follows".
pub(super) fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(super) fn uvarint_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
